"""The web page behind ``cameras serve``: drop a photo, see what the model looks at.

The page (Gradio) only moves data between the browser and a ``cameras.Session``: the
top-5 from ``Session.top_k``, the maps from the session's methods at the photo's size,
the class from the rule in ``cameras.core.classes`` and the pictures from ``viz.save_map``,
exactly as ``cameras explain`` does; there is no saliency maths here.

Everything above ``build_app``, the handlers included, needs no Gradio: the tests call
``handle_upload`` / ``handle_explain`` / ``handle_opacity`` / ``handle_corner`` directly.

For a detection model (``apps.detection.is_detector``) the page explains a box instead of
a class: the upload lists the model's top detections (the best one's box filled in), a box
is typed as ``x1,y1,x2,y2`` in the photo's pixels or drawn by clicking two corners on the
photo, and the class box is the label the detection must have (empty: any).
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import tempfile
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from PIL import Image, ImageDraw, UnidentifiedImageError

from .apps import detection
from .apps.viz import save_map
from .core.budget import MemoryBudgetError
from .core.classes import ClassError, class_index
from .core.images import ImageError, load_image
from .core.targets import Box, Target
from .methods import METHODS, SaliencyMethod, default_scales
from .session import Session

MEGABYTE = 1024 * 1024
MAX_UPLOAD_BYTES = 20 * MEGABYTE
MAX_SIDE = 8000  # pixels, either side of the photo

# Quality presets: the largest CAMERAS scale for a 224-pixel input, in steps of 100 from
# 224 (the paper's default is 924). Other input sizes use the same factors of their shorter
# side, like ``default_scales``. Only CAMERAS uses scales; the other methods are single-scale.
PRESETS = {"fewer": 624, "default": 924, "more": 1224}

# Seconds that result files are kept on disk, ours and Gradio's copies of them.
KEEP_SECONDS = 3600
# Longest side of the photo shown back to the user.
PREVIEW_SIDE = 1024
# Longest side of the copy of the photo the page works on: a larger upload is downscaled
# (Lanczos) once, at upload, and its top-5, maps, overlays and .npy files come from that
# copy. The maps hold no detail finer than this (the model sees the photo at a shorter
# side of 224 to 924 pixels), and an 8000 x 8000 upload then costs 16 MB per map, not 256.
WORK_SIDE = 2048


class WebError(ValueError):
    """A problem with what the user gave the page; the message is one line for the page."""


def working_copy(image: Image.Image, work_side: int = WORK_SIDE) -> Image.Image:
    """The photo the page works on: ``image`` itself when its longer side is at most
    ``work_side``, else a copy downscaled (Lanczos, aspect kept) to that longer side."""
    if max(image.size) <= work_side:
        return image
    scale = work_side / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


def preset_scales(preset: str, shorter_side: int) -> list[int]:
    """CAMERAS scales (ascending shorter-side sizes) for a quality preset and an input
    whose shorter side is ``shorter_side``; "default" equals ``default_scales``."""
    if preset not in PRESETS:
        raise ValueError(f"unknown quality preset {preset!r}; choose from {', '.join(PRESETS)}")
    return default_scales(shorter_side, PRESETS[preset])


def open_upload(
    path: str | Path, max_bytes: int = MAX_UPLOAD_BYTES, max_side: int = MAX_SIDE
) -> Image.Image:
    """An uploaded file -> upright 8-bit RGB PIL image, or WebError with a one-line reason
    (too many bytes, too many pixels on a side, not an image). Messages name the file by its
    own name, not the server's temporary path."""
    path = Path(path)
    name = path.name
    try:
        size = path.stat().st_size
    except OSError:
        raise WebError(f"{name}: the upload could not be read; please upload it again") from None
    if size > max_bytes:
        raise WebError(
            f"{name}: the file is {size / MEGABYTE:.1f} MB, over the "
            f"{max_bytes / MEGABYTE:g} MB limit"
        )
    try:
        # Image.open reads the header only, so an oversized photo is refused before decoding.
        with Image.open(path) as probe:
            width, height = probe.size
    except Image.DecompressionBombError:
        raise WebError(f"{name}: the image has too many pixels") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        width = height = 0  # not readable as an image: load_image below says why
    if max(width, height) > max_side:
        raise WebError(
            f"{name}: the image is {width} x {height} pixels; "
            f"the limit is {max_side} pixels on either side"
        )
    try:
        return load_image(path)
    except ImageError as error:
        raise WebError(str(error).replace(str(path), name, 1)) from None


@dataclass
class MapResult:
    """One method's map for one photo.

    saliency: (H, W) float32 in [0, 1], the photo's own height and width.
    """

    method: str
    saliency: np.ndarray
    target: int | Target  # a class index, or the target explained (a detector's Box)
    target_name: str
    scales_kept: list[int]
    warning: str | None = None  # fewer than half of the scales counted


def method_for(session: Session, name: str, preset: str = "default") -> SaliencyMethod:
    """The session's method ``name`` at a quality preset (only CAMERAS uses scales); the
    default preset is the session's own scales when it has some (``serve --scales``)."""
    if name not in METHODS:
        raise WebError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")
    if preset == "default" and session.scales:
        return session.method(name)
    return session.method(name, preset_scales(preset, session.prep.size))


def explain_photo(
    session: Session,
    image: Image.Image,
    target: int | Target,
    methods: Sequence[str],
    preset: str = "default",
    progress: Callable[[int, str], None] | None = None,
) -> list[MapResult]:
    """One map per method for ``target`` (a class index, or a target such as a ``Box`` in
    the model input's pixels), each resized to the photo's own size.

    progress(i, name) is called before method i (0-based) starts.
    """
    if not methods:
        raise WebError("choose at least one method")
    x = session.input(image)
    results = []
    for i, name in enumerate(methods):
        method = method_for(session, name, preset)
        if progress is not None:
            progress(i, name)
        try:
            explanation = method(x, targets=target)
        except MemoryBudgetError as error:  # a preset too large for a very wide photo
            raise WebError(f"{name}: {error}; choose a smaller quality preset") from None
        saliency = session.map_at_image_size(explanation, image)
        kept = [s.scale for s in explanation.scales[0] if s.kept]
        chosen = explanation.targets[0]
        warning = explanation.scale_warnings[0]
        shown = (
            session.class_name(chosen) if isinstance(chosen, int) else explanation.target_labels[0]
        )
        results.append(MapResult(name, saliency, chosen, shown, kept, warning))
    return results


def render(
    image: Image.Image,
    results: Sequence[MapResult],
    alpha: float,
    folder: Path,
    stem: str,
    cmap: str = "jet",
    maps: Sequence[str] | None = None,
) -> tuple[list[tuple[str, str]], list[str]]:
    """Write ``<stem>_<method>.png`` (overlay at the photo's size, map opacity ``alpha`` in
    [0, 1]) and ``<stem>_<method>.npy`` (the float32 map) per result into ``folder``.

    maps: the .npy paths already written for these results (a new opacity changes only
    the overlays, and a map can be hundreds of MB); None writes them.
    Returns (gallery items as (png path, caption), download paths: png, npy per result).
    """
    folder.mkdir(parents=True, exist_ok=True)
    items, files = [], []
    for i, result in enumerate(results):
        base = folder / f"{stem}_{result.method}"
        png = base.with_suffix(".png")
        npy = str(base.with_suffix(".npy")) if maps is None else maps[i]
        save_map(image, result.saliency, png, npy if maps is None else None, cmap, alpha)
        caption = f"{result.method}: {result.target_name}"
        if isinstance(result.target, int):
            caption += f" ({result.target})"
        items.append((str(png), caption))
        files.extend([str(png), npy])
    return items, files


class ResultFolders:
    """Per-computation folders under one private temporary folder, removed at exit; those
    older than ``keep_seconds`` are removed as new ones are made, so a long-running server
    does not fill the disk (Gradio serves its own copies of the files it was handed)."""

    def __init__(self, keep_seconds: float = KEEP_SECONDS) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="cameras-web-"))
        self.keep_seconds = keep_seconds
        self._made: list[tuple[float, Path]] = []
        atexit.register(shutil.rmtree, self.root, True)

    def new(self) -> Path:
        now = time.monotonic()
        while self._made and now - self._made[0][0] > self.keep_seconds:
            shutil.rmtree(self._made.pop(0)[1], ignore_errors=True)
        folder = self.root / uuid.uuid4().hex
        folder.mkdir()
        self._made.append((now, folder))
        return folder


def _upload_path(upload) -> str | None:
    # gr.File hands over a path string (or an object with .name in older releases).
    if upload is None:
        return None
    return upload if isinstance(upload, str) else getattr(upload, "name", str(upload))


def _error(message: str) -> str:
    return f"**Error:** {message}"


# ---------------------------------------------------------------------------------------
# The page's handlers: plain functions of plain values, called by build_app's Gradio
# events and by the tests directly. Each returns a dict of what the page shows.
# ---------------------------------------------------------------------------------------


def handle_upload(
    session: Session, upload, max_bytes: int = MAX_UPLOAD_BYTES, max_side: int = MAX_SIDE
) -> dict:
    """A dropped file -> the photo's state, preview, status line, top-5 and class choices.

    Keys: state (None when nothing usable was dropped), preview (PIL, at most
    PREVIEW_SIDE a side), status (markdown), top5 ({label: probability}), choices
    ([(label, index as text)]), choice (the first choice's value or None). The state
    holds the photo's working copy (``working_copy``: at most WORK_SIDE a side); the
    full-size photo is not kept.
    """
    empty = {"state": None, "preview": None, "top5": None, "choices": [], "choice": None}
    path = _upload_path(upload)
    if path is None:
        return {**empty, "status": "Upload a photo to start."}
    try:
        original = open_upload(path, max_bytes, max_side)
    except WebError as error:
        return {**empty, "status": _error(str(error))}
    image = working_copy(original)
    shown = f"{original.width} x {original.height} px"
    if image is not original:
        shown += f", maps at {image.width} x {image.height}"
    photo_size = original.size
    del original  # a large photo's pixels are freed now, not when the next one comes
    if is_detection_session(session):
        return _detector_upload(session, image, photo_size, Path(path), shown)
    pairs = session.top_k(image)
    preview = image.copy()
    preview.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE))  # display only
    choices = [(f"{session.class_label(i)}, {p:.1%}", str(i)) for i, p in pairs]
    return {
        "state": {"image": image, "stem": Path(path).stem},
        "preview": preview,
        "status": f"**{Path(path).name}**: {shown}. Choose a class and methods, then Explain.",
        "top5": {session.class_label(i): p for i, p in pairs},
        "choices": choices,
        "choice": choices[0][1],
    }


def handle_explain(
    session: Session,
    state: dict | None,
    text: str | None,
    chosen: Sequence[str] | None,
    preset: str,
    alpha: float,
    folders: ResultFolders,
    progress: Callable[[int, str], None] | None = None,
    box: str | None = None,
) -> dict:
    """Explain the loaded photo for the typed or picked class with the ticked methods; for
    a detection model, the detection matching ``box`` (x1,y1,x2,y2 in the photo's
    pixels) with the typed label (empty: any), see ``box_target``.

    Keys: status (markdown), items (gallery: (png path, caption)), files (downloads:
    png, npy per method), done (what a new opacity redraws from; None on error).
    """
    failed = {"items": [], "files": None, "done": None}
    if state is None:
        return {**failed, "status": _error("upload a photo first")}
    methods = [name for name in METHODS if name in (chosen or [])]
    try:
        shown = None
        if is_detection_session(session):
            index, shown = box_target(session, state, text, box)
        else:
            try:
                index = session.class_index(text or "")
            except ClassError as error:
                raise WebError(str(error)) from None
        results = explain_photo(session, state["image"], index, methods, preset, progress)
        if shown is not None:  # the box as typed, in the photo's pixels, not the input's
            results = [replace(result, target_name=shown) for result in results]
    except WebError as error:
        return {**failed, "status": _error(str(error))}
    items, files = render(state["image"], results, alpha, folders.new(), state["stem"])
    kept = next((r.scales_kept for r in results if r.method == "cameras"), None)
    note = f"; CAMERAS scales {', '.join(map(str, kept))}" if kept else ""
    warning = next((r.warning for r in results if r.warning), None)
    if shown is not None and not any(r.scales_kept for r in results):
        warning = "no detection of the model matches this box (and label), so the map is empty"
    if warning:  # fewer than half of the scales counted, or a box that nothing matches
        note += f". Warning: {warning}"
    done = {"results": results, "image": state["image"], "stem": state["stem"]}
    return {
        "status": f"Explained **{results[0].target_name}**"
        + (f" ({index})" if isinstance(index, int) else "")
        + f"{note}.",
        "items": items,
        "files": files,
        "done": done | {"maps": files[1::2]},
    }


def handle_opacity(done: dict | None, alpha: float, folders: ResultFolders) -> dict | None:
    """Redraw the overlays of the last explanation at a new opacity; None if there is
    none. The maps written at Explain are reused unless their folder has expired."""
    if done is None:
        return None
    maps = done["maps"] if all(Path(m).exists() for m in done["maps"]) else None
    items, files = render(
        done["image"], done["results"], alpha, folders.new(), done["stem"], maps=maps
    )
    return {"items": items, "files": files}


# ---------------------------------------------------------------------------------------
# Detection models: a box, typed or drawn, instead of a class.
# ---------------------------------------------------------------------------------------

# Whether each session's model is a detector, found once (it may take one probe pass).
_DETECTORS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# How many of the model's detections the upload lists.
DETECTIONS_SHOWN = 5


def is_detection_session(session: Session) -> bool:
    """Whether the session's model is a detector (``apps.detection.is_detector``), cached."""
    if session not in _DETECTORS:
        _DETECTORS[session] = detection.is_detector(session.model)
    return _DETECTORS[session]


def _to_photo(box, from_size: tuple[int, int], photo_size: tuple[int, int]) -> tuple:
    """A box in an image of ``from_size`` (width, height) -> the same box in the photo's
    pixels (``photo_size``, width and height): both are the whole photo, resized."""
    sx, sy = photo_size[0] / from_size[0], photo_size[1] / from_size[1]
    return (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)


def _rounded(box) -> tuple:
    return tuple(round(float(v), 1) for v in box)


def _detector_upload(
    session: Session, image: Image.Image, photo_size: tuple[int, int], path: Path, shown: str
) -> dict:
    """``handle_upload`` for a detection model: its top detections (label and box in the
    photo's pixels) instead of a top-5, the best box filled in, its label chosen."""
    x = session.input(image)
    found = detection.top_detections(session.model, x, DETECTIONS_SHOWN)
    input_size = (x.shape[3], x.shape[2])
    listed = [
        (label, score, _rounded(_to_photo(b, input_size, photo_size))) for label, score, b in found
    ]
    preview = image.copy()
    preview.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE))
    choices = []
    for label, _, _ in listed:
        choice = (
            session.class_label(label) if session.class_names else f"class {label}",
            str(label),
        )
        if choice not in choices:
            choices.append(choice)
    best = listed[0] if listed else None
    state = {"image": image, "stem": path.stem, "photo_size": photo_size, "preview": preview}
    return {
        "state": state,
        "preview": _with_box(preview, best[2], photo_size) if best else preview,
        "status": f"**{path.name}**: {shown}. "
        + ("" if listed else "The model detects nothing in it. ")
        + "Type a box (x1,y1,x2,y2) or click two corners on the photo, then Explain.",
        "top5": {
            f"{name} at {detection.box_text(box)}": score
            for (label, score, box), name in zip(listed, _names(session, listed), strict=True)
        },
        "choices": choices,
        "choice": str(best[0]) if best else None,
        "box": detection.box_text(best[2]) if best else "",
    }


def _names(session: Session, listed) -> list[str]:
    return [
        session.class_label(label) if session.class_names else f"class {label}"
        for label, _, _ in listed
    ]


def _with_box(preview: Image.Image, box, photo_size: tuple[int, int]) -> Image.Image:
    """A copy of the preview with ``box`` (photo pixels) outlined."""
    drawn = preview.copy()
    corners = _to_photo(box, photo_size, preview.size)
    width = max(2, round(max(preview.size) / 300))
    ImageDraw.Draw(drawn).rectangle(corners, outline=(255, 0, 0), width=width)
    return drawn


def handle_corner(state: dict | None, corner, point, box: str | None) -> dict:
    """A click on the photo at ``point`` ((x, y) in the preview's pixels, Gradio's
    ``SelectData.index``): the first click keeps a corner, the second makes the box of the
    two corners (in the photo's pixels). Keys: corner (the kept corner or None), box (the
    box text), preview (the photo with the box drawn), status."""
    if state is None or "photo_size" not in state:
        return {
            "corner": None,
            "box": box,
            "preview": None,
            "status": _error("upload a photo first"),
        }
    photo_size, preview = state["photo_size"], state["preview"]
    x, y = _to_photo((point[0], point[1], point[0], point[1]), preview.size, photo_size)[:2]
    x, y = min(max(x, 0.0), photo_size[0]), min(max(y, 0.0), photo_size[1])
    if corner is None:
        return {
            "corner": (x, y),
            "box": box,
            "preview": preview,
            "status": f"Corner {x:.0f},{y:.0f}: now click the opposite corner.",
        }
    drawn = _rounded((min(corner[0], x), min(corner[1], y), max(corner[0], x), max(corner[1], y)))
    if drawn[0] == drawn[2] or drawn[1] == drawn[3]:
        return {
            "corner": None,
            "box": box,
            "preview": preview,
            "status": _error("click two different corners"),
        }
    text = detection.box_text(drawn)
    return {
        "corner": None,
        "box": text,
        "preview": _with_box(preview, drawn, photo_size),
        "status": f"Box {text}: choose a label (or none) and methods, then Explain.",
    }


def box_target(
    session: Session, state: dict, label: str | None, box: str | None
) -> tuple[Box, str]:
    """The ``Box`` of a typed box (the photo's pixels) and label (empty: any), in the
    pixels of the model input made from the photo, and how the page names it ("box
    10,20,60,50 dog (18)"); WebError with a one-line reason."""
    text = (box or "").strip()
    if not text:
        raise WebError("type a box as x1,y1,x2,y2 or click two corners on the photo")
    width, height = state["photo_size"]
    try:
        corners = detection.parse_box(text)
        detection.check_inside(corners, (height, width))
    except ValueError as error:
        raise WebError(f"box {text}: {error}") from None
    index = None
    if (label or "").strip():
        try:
            index = class_index(label, session.class_names)
        except ClassError as error:
            raise WebError(str(error)) from None
    in_width, in_height = session.prep.resized_size(*state["image"].size)
    target = Box(detection.box_in_input(corners, (height, width), (in_height, in_width)), index)
    return target, detection.box_label(corners, index, session.class_names)


def build_app(
    session: Session,
    max_bytes: int = MAX_UPLOAD_BYTES,
    max_side: int = MAX_SIDE,
    model_name: str | None = None,
    title: str = "CAMERAS saliency",
):
    """The Gradio Blocks page over ``handle_*``. Model work runs through one queue slot
    (concurrency 1, shared by upload and explain), so requests wait their turn."""
    # Analytics also switch on a version check over the network at launch: keep both off.
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    import gradio as gr

    # Gradio keeps a copy of every file it serves: drop those older than KEEP_SECONDS.
    expiry = (600, KEEP_SECONDS)
    detector = is_detection_session(session)
    asked = "type or draw a box on it" if detector else "pick a class"
    with gr.Blocks(title=title, analytics_enabled=False, delete_cache=expiry) as app:
        gr.Markdown(
            "## CAMERAS: what does the model look at?\n"
            f"Drop a photo, {asked} and one or more methods, then **Explain**. "
            f"Model: `{model_name or type(session.model).__name__}`, "
            f"input shorter side {session.prep.size} px."
        )
        page = _page_widgets(gr, session.prep.size, max_bytes, max_side, detector)
        if detector:
            _connect_box_handlers(gr, page, session, max_bytes, max_side, ResultFolders())
        else:
            _connect_handlers(gr, page, session, max_bytes, max_side, ResultFolders())
    app.queue(default_concurrency_limit=1, max_size=32)
    app.cameras_max_bytes = max_bytes  # read by serve(): Gradio enforces it at upload
    return app


def _preset_choices(size: int) -> list[tuple[str, str]]:
    """(label, preset) pairs for the quality radio: each preset's scales for this input."""
    choices = []
    for preset in PRESETS:
        scales = preset_scales(preset, size)
        choices.append((f"{preset}: {scales[0]}..{scales[-1]} ({len(scales)} scales)", preset))
    return choices


def _page_widgets(
    gr, size: int, max_bytes: int, max_side: int, detector: bool = False
) -> SimpleNamespace:
    """The page's widgets, laid out inside the open Blocks; returned by name. A detection
    model's page has a box field beside the class (then the detection's label, empty for
    any), a kept corner for drawing the box by two clicks, and lists detections."""
    limits = f"up to {max_bytes / MEGABYTE:g} MB and {max_side} pixels a side"
    page = SimpleNamespace(photo=gr.State(None), computed=gr.State(None))
    with gr.Row():
        with gr.Column(scale=1):
            page.upload = gr.File(label=f"Photo ({limits})", elem_id="upload", height=150)
            page.preview = gr.Image(label="Photo", interactive=False, elem_id="preview", height=240)
            listed = "Top detections" if detector else "Top-5 classes"
            page.top5 = gr.Label(num_top_classes=5, label=listed, elem_id="top5")
        with gr.Column(scale=2):
            with gr.Row():
                page.target = gr.Dropdown(
                    label="Label of the detection" if detector else "Class to explain",
                    info="one of the detections', or a class name or index; empty: any"
                    if detector
                    else "one of the top-5, or type a class name or index",
                    choices=[],
                    allow_custom_value=True,
                    filterable=True,
                    elem_id="target",
                )
                if detector:
                    page.corner = gr.State(None)
                    page.box = gr.Textbox(
                        label="Box to explain: x1,y1,x2,y2 in the photo's pixels",
                        info="type it, or click two opposite corners on the photo",
                        elem_id="box",
                    )
                page.preset = gr.Radio(
                    choices=_preset_choices(size),
                    value="default",
                    label="Quality (CAMERAS scales; more is sharper and slower)",
                    elem_id="preset",
                )
            page.methods = gr.CheckboxGroup(
                choices=list(METHODS),
                value=["cameras", "gradcam"],
                label="Methods",
                elem_id="methods",
            )
            with gr.Row():
                page.button = gr.Button("Explain", variant="primary", elem_id="explain")
                page.alpha = gr.Slider(
                    0.0, 1.0, value=0.5, step=0.05, label="Map opacity", elem_id="alpha"
                )
            page.status = gr.Markdown("Upload a photo to start.", elem_id="status")
            page.gallery = gr.Gallery(
                label="Overlays",
                columns=2,
                height="auto",
                object_fit="contain",
                format="png",
                elem_id="overlays",
            )
            page.downloads = gr.File(
                label=f"Downloads: overlay .png and raw map .npy (float32, photo's size, "
                f"at most {WORK_SIDE} px a side)",
                file_count="multiple",
                interactive=False,
                elem_id="downloads",
            )
    return page


def _gallery(gr, items: list, image: Image.Image):
    """Up to three overlays a row; the gallery is made tall enough for every row at the
    photo's aspect ratio (about 700 px of width to share) plus the label and the gaps, so
    no overlay is cut or scrolled."""
    if not items:
        return gr.Gallery()
    columns = min(len(items), 3)
    rows = -(-len(items) // columns)
    box = 700 // columns * image.height // image.width
    return gr.Gallery(value=items, columns=columns, height=rows * (box + 40) + 80)


def _connect_handlers(gr, page, session, max_bytes, max_side, folders: ResultFolders) -> None:
    """Wire the widgets to ``handle_upload``, ``handle_explain`` and ``handle_opacity``."""

    def on_upload(file):
        # The drop zone is emptied every time, so it is always ready for the next photo;
        # the preview and the status line say which photo is loaded.
        shown = handle_upload(session, file, max_bytes, max_side)
        dropdown = gr.Dropdown(choices=shown["choices"], value=shown["choice"])
        emptied = ([], None, None)  # gallery, downloads, computed: nothing for the new photo
        state = (shown["state"], shown["preview"], shown["status"], shown["top5"], dropdown)
        return (None, *state, *emptied)

    # Gradio finds the progress bar by this default value, hence the call in the signature.
    def on_explain(state, text, chosen, quality, opacity, progress=gr.Progress()):  # noqa: B008
        count = len(chosen or [])

        def step(i: int, name: str) -> None:
            progress((i, count), desc=f"{name} ({i + 1} of {count})")

        shown = handle_explain(session, state, text, chosen, quality, opacity, folders, step)
        picture = state["image"] if state is not None else None
        return shown["status"], _gallery(gr, shown["items"], picture), shown["files"], shown["done"]

    # Upload and explain both run the model: one shared slot, others wait in the queue.
    page.upload.upload(
        on_upload,
        inputs=page.upload,
        outputs=[page.upload, page.photo, page.preview, page.status, page.top5, page.target]
        + [page.gallery, page.downloads, page.computed],
        concurrency_limit=1,
        concurrency_id="model",
    )
    page.button.click(
        on_explain,
        inputs=[page.photo, page.target, page.methods, page.preset, page.alpha],
        outputs=[page.status, page.gallery, page.downloads, page.computed],
        concurrency_limit=1,
        concurrency_id="model",
    )
    _connect_opacity(gr, page, folders)


def _connect_opacity(gr, page, folders: ResultFolders) -> None:
    """Redraw the overlays at a new opacity (no model work, its own queue slot)."""

    def on_opacity(done, opacity):
        shown = handle_opacity(done, opacity, folders)
        if shown is None:
            return gr.Gallery(), None
        return _gallery(gr, shown["items"], done["image"]), shown["files"]

    # While the slider is dragged, only the latest value is drawn once the last one is done.
    page.alpha.change(
        on_opacity,
        inputs=[page.computed, page.alpha],
        outputs=[page.gallery, page.downloads],
        trigger_mode="always_last",
        show_progress="minimal",
    )


def _connect_box_handlers(gr, page, session, max_bytes, max_side, folders) -> None:
    """A detection model's page: upload (top detections), clicks on the photo
    (``handle_corner``), explain with the box, and the opacity as for classes."""

    def on_upload_box(file):
        shown = handle_upload(session, file, max_bytes, max_side)
        dropdown = gr.Dropdown(choices=shown["choices"], value=shown["choice"])
        state = (shown["state"], shown["preview"], shown["status"], shown["top5"], dropdown)
        return (None, *state, shown.get("box", ""), None, [], None, None)

    def on_corner(state, corner, box, event: gr.SelectData):
        shown = handle_corner(state, corner, event.index, box)
        picture = shown["preview"] if shown["preview"] is not None else gr.Image()
        return shown["corner"], shown["box"], picture, shown["status"]

    # Gradio passes the click to the parameter typed gr.SelectData; gradio is imported in
    # this function, so the postponed annotation could not be resolved: set the class.
    on_corner.__annotations__["event"] = gr.SelectData

    def on_explain_box(state, text, box, chosen, quality, opacity, progress=gr.Progress()):  # noqa: B008
        count = len(chosen or [])

        def step(i: int, name: str) -> None:
            progress((i, count), desc=f"{name} ({i + 1} of {count})")

        shown = handle_explain(
            session, state, text, chosen, quality, opacity, folders, step, box=box
        )
        picture = state["image"] if state is not None else None
        return shown["status"], _gallery(gr, shown["items"], picture), shown["files"], shown["done"]

    page.upload.upload(
        on_upload_box,
        inputs=page.upload,
        outputs=[page.upload, page.photo, page.preview, page.status, page.top5, page.target]
        + [page.box, page.corner, page.gallery, page.downloads, page.computed],
        concurrency_limit=1,
        concurrency_id="model",
    )
    page.preview.select(
        on_corner,
        inputs=[page.photo, page.corner, page.box],
        outputs=[page.corner, page.box, page.preview, page.status],
    )
    page.button.click(
        on_explain_box,
        inputs=[page.photo, page.target, page.box, page.methods, page.preset, page.alpha],
        outputs=[page.status, page.gallery, page.downloads, page.computed],
        concurrency_limit=1,
        concurrency_id="model",
    )
    _connect_opacity(gr, page, folders)


def theme():
    """Gradio's default look with the system's fonts: the default theme fetches web fonts,
    which an offline browser would wait for."""
    import gradio as gr

    system = ("ui-sans-serif", "system-ui", "sans-serif")
    return gr.themes.Default(font=system, font_mono=("ui-monospace", "monospace"))


def stop_on_sigterm() -> None:
    """Make SIGTERM stop the server as Ctrl-C does (the main thread's wait ends, the app is
    closed and the interpreter exits normally), so the atexit clean-up removes the page's
    temporary folder; by default SIGTERM ends the process with no clean-up at all."""

    def interrupt(signum, frame) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    if hasattr(signal, "SIGHUP"):  # a closed terminal stops it the same way
        signal.signal(signal.SIGHUP, interrupt)


def serve(app, host: str = "127.0.0.1", port: int = 7860, block: bool = True):
    """Start the page on host:port (loopback by default), no share link, no server-side
    rendering (it would need Node). ``block=False`` returns once the server is up.
    Quiet: Gradio's own banner suggests ``share=True`` (a public link), which this page
    never offers; ``cameras serve`` prints the address itself. A blocking server in the
    main thread stops cleanly on SIGTERM (``stop_on_sigterm``)."""
    if block and threading.current_thread() is threading.main_thread():
        stop_on_sigterm()
    return app.launch(
        server_name=host,
        server_port=port,
        share=False,
        inbrowser=False,
        show_error=True,
        ssr_mode=False,
        max_file_size=getattr(app, "cameras_max_bytes", MAX_UPLOAD_BYTES),
        theme=theme(),
        prevent_thread_lock=not block,
        quiet=True,
    )
