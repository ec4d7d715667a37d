"""Every picture the project draws: colour maps, overlays at the image's own size, the
comparison grids of ``cameras compare``, the attack's perturbation panels, the sanity
figures and the evaluation curves; and the one PNG writer (``save_png``).

Figures use matplotlib's object interface (``matplotlib.figure.Figure`` drawn on an Agg
canvas): no pyplot, no global state, no backend switching, safe in threads and servers.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from ..core.images import resize_map

if TYPE_CHECKING:  # matplotlib is imported only when a figure is drawn (import time)
    from matplotlib.figure import Figure


# Pixels per band when an overlay is built: the float32 working copies of one band stay
# near 50 MB, whatever the photo's size, so a 12000 x 12000 photo needs no full-size copy
# beyond the map and the overlay themselves.
BAND_PIXELS = 2**22


def colour_table(cmap: str = "jet") -> np.ndarray:
    """(N + 1, 3) uint8: the colour map's N colours, then its colour for NaN ("bad")."""
    from matplotlib import colormaps

    if cmap not in colormaps:
        raise ValueError(f"unknown colour map {cmap!r}")
    colour_map = colormaps[cmap]
    rgba = np.concatenate([colour_map(np.arange(colour_map.N)), [colour_map.get_bad()]])
    return (rgba[:, :3] * 255.0 + 0.5).astype(np.uint8)


def _colour_indices(saliency: np.ndarray, count: int) -> np.ndarray:
    # matplotlib's own lookup for values in [0, 1]: floor(x * N) in the map's dtype, with
    # 1.0 in the last colour; NaN takes the extra "bad" entry at index N.
    values = np.clip(saliency, 0.0, 1.0) * count
    indices = np.minimum(np.nan_to_num(values, nan=count), count - 1).astype(np.intp)
    indices[np.isnan(values)] = count
    return indices


def colorize(saliency: np.ndarray, cmap: str = "jet") -> np.ndarray:
    """(H, W) map in [0, 1] -> (H, W, 3) uint8 RGB through a matplotlib colour map
    (values outside [0, 1] are clipped). A lookup table of the map's colours: the same
    colours as calling the colour map, at 3 bytes a pixel instead of 32."""
    table = colour_table(cmap)
    saliency = np.asarray(saliency)
    return table[_colour_indices(saliency, len(table) - 1)]


def overlay(
    image: Image.Image | np.ndarray,
    saliency: np.ndarray | torch.Tensor,
    cmap: str = "jet",
    alpha: float = 0.5,
) -> Image.Image:
    """The image with its coloured map blended on top, at the image's own size.

    image: a PIL image or an (H, W, 3) uint8 array.
    saliency: (h, w) in [0, 1]; resized (bilinear) to the image when sizes differ.
    alpha: the map's opacity, 0 (image only) to 1 (map only).
    Built a band of rows at a time (``BAND_PIXELS``), straight into the RGB result.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if isinstance(image, np.ndarray):
        height, width = image.shape[:2]
    else:
        width, height = image.size
    if isinstance(saliency, torch.Tensor):
        if tuple(saliency.shape) != (height, width):
            saliency = torch.from_numpy(resize_map(saliency, height, width))
        saliency = saliency.detach().cpu().numpy()
    elif saliency.shape != (height, width):
        saliency = resize_map(torch.from_numpy(saliency), height, width)
    table = colour_table(cmap)
    result = Image.new("RGB", (width, height))
    rows = max(1, BAND_PIXELS // max(1, width))
    for top in range(0, height, rows):
        bottom = min(top + rows, height)
        if isinstance(image, np.ndarray):
            pixels = image[top:bottom].astype(np.float32)
        else:
            band = image.crop((0, top, width, bottom))
            pixels = np.asarray(band if band.mode == "RGB" else band.convert("RGB"), np.float32)
        colours = table[_colour_indices(saliency[top:bottom], len(table) - 1)]
        blended = (1.0 - alpha) * pixels + alpha * colours.astype(np.float32)
        result.paste(Image.fromarray(np.clip(blended + 0.5, 0, 255).astype(np.uint8)), (0, top))
    return result


# ---------------------------------------------------------------------------------------
# Comparison figures: the photo and a grid of overlays, laid out to the pixel.
# ---------------------------------------------------------------------------------------

# Layout constants in pixels. Every panel is drawn at exactly its own pixel size (one
# image pixel per screen pixel), so what a panel shows is the overlay, not a resampling
# of it; the tests rely on this.
_GAP = 10  # between panels, and around the grid
_TITLE = 34  # band above each panel for a two-line title
_BAR_WIDTH = 16  # a colour bar's strip
_BAR_SPACE = 100  # a colour bar, its tick labels and its label
_DPI = 100
_FONT_SIZE = 9


@dataclass
class Panel:
    """One cell of a comparison figure.

    saliency: (h, w) map, in [0, 1], or in [-1, 1] when ``signed`` (a difference of two
        maps); resized (bilinear) to the panel's size.
    title: text above the panel (may hold one newline).
    signed: draw with the diverging colour map, 0 in its middle.
    """

    saliency: np.ndarray | torch.Tensor
    title: str = ""
    signed: bool = False


def difference_map(map_a: np.ndarray | torch.Tensor, map_b: np.ndarray | torch.Tensor):
    """``map_a - map_b`` for two (h, w) maps in [0, 1]: (h, w) float32 in [-1, 1].

    Positive where the evidence is for class a rather than class b, negative the other way.
    """
    a = _as_array(map_a)
    b = _as_array(map_b)
    if a.shape != b.shape:
        raise ValueError(f"difference_map: shapes differ, {a.shape} and {b.shape}")
    return np.clip(a - b, -1.0, 1.0).astype(np.float32)


def panel_image(
    image: Image.Image,
    panel: Panel,
    cmap: str = "jet",
    alpha: float = 0.5,
    diff_cmap: str = "RdBu_r",
    signed_range: float = 1.0,
) -> Image.Image:
    """The overlay a panel shows, at ``image``'s size: ``overlay`` of the panel's map.

    Signed maps go through ``diff_cmap`` with -signed_range..signed_range spread over the
    whole colour map (values beyond are clipped), on a grey copy of the photo: a diverging
    map is pale near 0, and the photo's own colours would otherwise read as evidence for
    one class or the other.
    """
    saliency = _as_array(panel.saliency)
    if panel.signed:
        if not signed_range > 0:
            raise ValueError(f"signed_range must be positive, got {signed_range}")
        grey = image.convert("L").convert("RGB")
        scaled = np.clip(saliency / signed_range, -1.0, 1.0)
        return overlay(grey, (scaled + 1.0) / 2.0, diff_cmap, alpha)
    return overlay(image, saliency, cmap, alpha)


def fit_height(image: Image.Image, height: int) -> Image.Image:
    """The photo as a comparison figure's cell shows it: RGB, ``height`` pixels high, the
    width from its aspect ratio (at least 1), Lanczos resampling."""
    width = max(1, round(image.width * height / image.height))
    return image.convert("RGB").resize((width, height), Image.Resampling.LANCZOS)


def symmetric_range(rows: Sequence[Sequence[Panel]], step: float = 0.05) -> float:
    """The colour range R (colours span -R..R) shared by a figure's signed panels: their
    largest |value|, rounded up to ``step``, in [step, 1]. Two maps of similar classes
    differ by a few tenths at most; on a fixed -1..1 scale the difference would be
    invisible, and one range for all panels keeps them comparable."""
    largest = max(
        (float(np.abs(_as_array(p.saliency)).max()) for row in rows for p in row if p.signed),
        default=1.0,
    )
    # The small slack keeps a float32 0.2 (0.2000000030) from rounding up to 0.25.
    return float(min(1.0, max(step, np.ceil(largest / step - 1e-6) * step)))


def comparison_figure(
    image: Image.Image,
    rows: Sequence[Sequence[Panel]],
    cmap: str = "jet",
    alpha: float = 0.5,
    diff_cmap: str = "RdBu_r",
    panel_height: int = 224,
    photo_title: str = "photo",
    diff_labels: tuple[str, str] | None = None,
    title: str | None = None,
    signed_range: float | None = None,
) -> Figure:
    """A grid figure: the photo at the top left, then one row of panels per entry of ``rows``.

    Column 0 holds the photo (first row only); panel j of row i sits in column j + 1.
    Every cell is ``panel_height`` pixels high and as wide as the photo's aspect gives;
    panels are overlays (``panel_image``) of the photo resized to that size. At the right,
    a shared colour bar for the [0, 1] maps and, when a signed panel is present, one for
    [-R, R] whose ends are labelled with ``diff_labels`` (class a at +R, class b at -R);
    R is ``signed_range``, or ``symmetric_range(rows)`` when None.

    The figure has a fixed dpi (100), so ``figure.savefig(path)`` (or ``figure_to_image``)
    gives a picture of exactly ``figure_size(...)`` pixels. Axes are labelled ``"photo"``,
    ``"panel i,j"``, ``"colorbar"`` and ``"colorbar signed"``; ``panel_boxes(figure)``
    returns their pixel boxes.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = _checked_rows(rows, cmap, diff_cmap, alpha, panel_height)
    photo = fit_height(image, panel_height)
    width, height = figure_size(image.size, rows, panel_height, title is not None)
    grid = _Grid(photo.size, 1 + max(len(row) for row in rows), width, height, bool(title))
    if signed_range is None:
        signed_range = symmetric_range(rows)

    figure = Figure(figsize=(width / _DPI, height / _DPI), dpi=_DPI)
    FigureCanvasAgg(figure)
    figure.patch.set_facecolor("white")
    if title:
        figure.text(0.5, 1 - _GAP / height, title, ha="center", va="top", fontsize=_FONT_SIZE + 2)
    grid.add_cell(figure, 0, 0, photo, "photo", photo_title)
    for i, row in enumerate(rows):
        for j, panel in enumerate(row):
            pixels = panel_image(photo, panel, cmap, alpha, diff_cmap, signed_range)
            grid.add_cell(figure, i, j + 1, pixels, f"panel {i},{j}", panel.title)
    _add_colour_bars(figure, grid, rows, cmap, diff_cmap, signed_range, diff_labels)
    return figure


def _checked_rows(
    rows: Sequence[Sequence[Panel]], cmap: str, diff_cmap: str, alpha: float, panel_height: int
) -> list[list[Panel]]:
    """The rows as lists, or a ValueError naming the first bad argument of comparison_figure."""
    from matplotlib import colormaps

    for name in {cmap, diff_cmap}:
        if name not in colormaps:
            raise ValueError(f"unknown colour map {name!r}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if panel_height < 16:
        raise ValueError(f"panel_height must be at least 16 pixels, got {panel_height}")
    rows = [list(row) for row in rows]
    if not rows or not any(rows):
        raise ValueError("comparison_figure: no panels to draw")
    return rows


@dataclass(frozen=True)
class _Grid:
    """Where comparison_figure's cells go, in pixels of a width x height figure: cells of
    ``cell`` (w, h) in ``columns`` columns, each under a title line, below an optional
    figure title."""

    cell: tuple[int, int]
    columns: int
    width: int
    height: int
    titled: bool

    @property
    def top(self) -> int:
        return _GAP + (_FONT_SIZE * 2 if self.titled else 0)

    @property
    def right(self) -> int:
        """The x just past the last column (where the colour bars start)."""
        return _GAP + self.columns * (self.cell[0] + _GAP)

    def row_top(self, row: int) -> int:
        """The y of the image (below its title line) in ``row``."""
        return self.top + row * (_TITLE + self.cell[1] + _GAP) + _TITLE

    def add_cell(self, figure, row: int, column: int, pixels, label: str, text: str) -> None:
        cell_w, cell_h = self.cell
        x0 = _GAP + column * (cell_w + _GAP)
        box = _fraction_box(x0, self.row_top(row), cell_w, cell_h, self.width, self.height)
        axes = figure.add_axes(box, label=label)
        axes.imshow(np.asarray(pixels), interpolation="none", aspect="auto")
        axes.set_axis_off()
        _fit_text(axes.set_title(text, fontsize=_FONT_SIZE, pad=3, linespacing=1.2), cell_w)


def _add_colour_bars(figure, grid: _Grid, rows, cmap, diff_cmap, signed_range, diff_labels):
    """Colour bars at the right, each as tall as the rows that use it. When the plain rows
    and the signed rows are two separate blocks (the usual case: the difference row last)
    both bars share one column; otherwise they stand side by side."""
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    plain_rows = [i for i, row in enumerate(rows) if any(not p.signed for p in row)]
    signed_rows = [i for i, row in enumerate(rows) if any(p.signed for p in row)]
    bars = []
    if plain_rows:
        bars.append(("colorbar", cmap, Normalize(0.0, 1.0), plain_rows))
    if signed_rows:
        norm = Normalize(-signed_range, signed_range)
        bars.append(("colorbar signed", diff_cmap, norm, signed_rows))
    stacked = _bars_stack(plain_rows, signed_rows)
    for k, (label, name, norm, used) in enumerate(bars):
        x0 = grid.right + (0 if stacked else k * _BAR_SPACE)
        y0 = grid.row_top(min(used))
        y1 = grid.row_top(max(used)) + grid.cell[1]
        box = _fraction_box(x0, y0, _BAR_WIDTH, y1 - y0, grid.width, grid.height)
        axes = figure.add_axes(box, label=label)
        bar = figure.colorbar(ScalarMappable(norm=norm, cmap=colormaps[name]), cax=axes)
        bar.ax.tick_params(labelsize=_FONT_SIZE - 1)
        if label == "colorbar signed":
            _label_signed_bar(bar, signed_range, diff_labels, y1 - y0)
        else:
            bar.set_label("saliency", fontsize=_FONT_SIZE)


def _label_signed_bar(bar, signed_range: float, diff_labels, length: int) -> None:
    r = signed_range
    bar.set_ticks([-r, 0.0, r])
    bar.set_ticklabels([f"\u2212{r:.2f}", "0", f"+{r:.2f}"])
    if diff_labels is not None:
        # Along the bar (read bottom to top): class b at the bottom, class a on top.
        text = f"\u2190 {_short(diff_labels[1])}    {_short(diff_labels[0])} \u2192"
        bar.set_label(text, fontsize=_FONT_SIZE)
        _fit_text(bar.ax.yaxis.label, length, vertical=True)


def figure_size(
    image_size: tuple[int, int],
    rows: Sequence[Sequence[Panel]],
    panel_height: int = 224,
    titled: bool = False,
) -> tuple[int, int]:
    """(width, height) in pixels of ``comparison_figure`` for an image of ``image_size``
    (width, height) and these rows of panels."""
    image_width, image_height = image_size
    cell_w = max(1, round(image_width * panel_height / image_height))  # as fit_height
    columns = 1 + max(len(row) for row in rows)
    plain_rows = [i for i, row in enumerate(rows) if any(not p.signed for p in row)]
    signed_rows = [i for i, row in enumerate(rows) if any(p.signed for p in row)]
    bars = 1 if _bars_stack(plain_rows, signed_rows) else 2
    width = _GAP + columns * (cell_w + _GAP) + _BAR_SPACE * bars
    height = _GAP + (_FONT_SIZE * 2 if titled else 0) + len(rows) * (_TITLE + panel_height + _GAP)
    return width, height


def panel_boxes(figure: Figure) -> dict[str, tuple[int, int, int, int]]:
    """Pixel boxes (left, top, right, bottom), top-left origin, of a comparison figure's
    labelled axes: ``"photo"``, ``"panel i,j"``, ``"colorbar"``, ``"colorbar signed"``."""
    width, height = (round(v) for v in figure.get_size_inches() * figure.dpi)
    boxes = {}
    for axes in figure.axes:
        label = axes.get_label()
        if label == "photo" or label.startswith(("panel ", "colorbar")):
            x0, y0, w, h = axes.get_position().bounds
            left, right = round(x0 * width), round((x0 + w) * width)
            top, bottom = round((1 - y0 - h) * height), round((1 - y0) * height)
            boxes[label] = (left, top, right, bottom)
    return boxes


def figure_to_image(figure: Figure) -> Image.Image:
    """Render a figure (at its own dpi) to an RGB PIL image."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = figure.canvas if isinstance(figure.canvas, FigureCanvasAgg) else None
    if canvas is None:
        canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return Image.fromarray(np.asarray(canvas.buffer_rgba())[..., :3].copy())


def save_png(
    picture: Image.Image | np.ndarray, path: str | Path, colors: int | None = None, dither=True
) -> tuple[int, int]:
    """The one PNG writer: an RGB picture (PIL or (H, W, 3) uint8) to ``path``, lossless
    and optimised; returns (width, height).

    colors: reduce to a palette of that many colours (2-256) first; with ``dither`` the
    palette comes from octree quantisation and Floyd-Steinberg dithering against it
    (quantising alone posterises photos and bands colour bars); without, the nearest
    palette colour (right for flat colour-mapped figures). None keeps every colour.
    """
    if isinstance(picture, np.ndarray):
        picture = Image.fromarray(picture)
    picture = picture.convert("RGB")
    if colors is not None:
        if not 2 <= colors <= 256:
            raise ValueError(f"colors must be between 2 and 256, got {colors}")
        if dither:
            palette = picture.quantize(colors, method=Image.Quantize.FASTOCTREE)
            picture = picture.quantize(palette=palette, dither=Image.Dither.FLOYDSTEINBERG)
        else:
            picture = picture.quantize(colors, dither=Image.Dither.NONE)
    from ..core.files import open_atomically

    with open_atomically(path) as handle:
        picture.save(handle, format="PNG", optimize=True)
    return picture.size


def save_figure(
    figure: Figure, path: str | Path, colors: int | None = None, dither: bool = True
) -> tuple[int, int]:
    """Write a figure at its own dpi, so its pixel size is kept; returns (width, height).

    PNG goes through ``save_png`` (optimised, optionally a palette of ``colors``
    colours: about 40 % of the file size); other formats (jpg, pdf, svg, ...) through
    matplotlib's canvas.
    """
    path = Path(path)
    if colors is not None and not 2 <= colors <= 256:
        raise ValueError(f"colors must be between 2 and 256, got {colors}")
    picture = figure_to_image(figure)
    if path.suffix.lower() == ".png":
        return save_png(picture, path, colors, dither)
    from ..core.files import open_atomically

    with open_atomically(path) as handle:
        figure.savefig(handle, dpi=figure.dpi, format=path.suffix.lstrip(".").lower() or None)
    return picture.size


def save_map(
    image: Image.Image,
    saliency: np.ndarray,
    png: str | Path,
    npy: str | Path | None,
    cmap: str = "jet",
    alpha: float = 0.5,
) -> None:
    """What ``cameras explain`` and the web page write per map: the overlay at the
    image's size as ``png`` and the (H, W) float32 map in [0, 1] as ``npy`` (if given)."""
    from ..core.files import open_atomically

    save_png(overlay(image, saliency, cmap, alpha), png)
    if npy is not None:
        with open_atomically(npy) as handle:
            np.save(handle, np.asarray(saliency, dtype=np.float32))


def npy_bytes(array: np.ndarray) -> bytearray:
    """The bytes of ``np.save(file, array)``, built in one buffer (one copy of the array,
    where saving to a BytesIO and reading it back makes two)."""
    array = np.asarray(array)
    if not array.flags.c_contiguous:  # np.save would write Fortran order: keep to C order
        array = np.ascontiguousarray(array)
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, np.lib.format.header_data_from_array_1_0(array))
    head = header.getvalue()
    data = bytearray(len(head) + array.nbytes)
    data[: len(head)] = head
    target = np.frombuffer(data, dtype=array.dtype, offset=len(head)).reshape(array.shape)
    target[...] = array  # C order, as np.save writes a C-contiguous array
    return data


def _bars_stack(plain_rows: list[int], signed_rows: list[int]) -> bool:
    """Whether the two colour bars fit in one column: their rows form separate blocks."""
    if not plain_rows or not signed_rows:
        return True
    return max(plain_rows) < min(signed_rows) or max(signed_rows) < min(plain_rows)


def _fraction_box(x0: int, y0: int, w: int, h: int, width: int, height: int):
    """A pixel box (top-left origin) as matplotlib's figure fractions (bottom-left origin)."""
    return [x0 / width, 1 - (y0 + h) / height, w / width, h / height]


def _short(text: str, limit: int = 20) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _fit_text(text, room: float, vertical: bool = False, smallest: int = 6) -> None:
    """Shrink a matplotlib Text (down to ``smallest`` points), then shorten its lines with
    an ellipsis, until it spans at most ``room`` pixels (its width, or height if vertical)."""
    figure = text.get_figure()
    renderer = figure.canvas.get_renderer()

    def span() -> float:
        box = text.get_window_extent(renderer)
        return box.height if vertical else box.width

    size = text.get_fontsize()
    while span() > room and size > smallest:
        size -= 1
        text.set_fontsize(size)
    lines = text.get_text().split("\n")
    while span() > room and any(len(line) > 4 for line in lines):
        longest = max(range(len(lines)), key=lambda k: len(lines[k]))
        lines[longest] = lines[longest].rstrip("\u2026")[:-1] + "\u2026"
        text.set_text("\n".join(lines))


def _as_array(saliency: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(saliency, torch.Tensor):
        saliency = saliency.detach().float().cpu().numpy()
    saliency = np.asarray(saliency, dtype=np.float32)
    if saliency.ndim != 2:
        raise ValueError(f"a map must be 2-D (h, w), got shape {saliency.shape}")
    return saliency


def perturbation_figure(
    image: np.ndarray,
    saliency: torch.Tensor | None,
    perturbations: list[tuple[str, torch.Tensor]],
    adversarial: np.ndarray,
    titles: dict[str, str],
    path: Path,
) -> None:
    """One PNG: the image with its map, each perturbation's magnitude (largest change over
    the colour channels, one shared colour scale), and the adversarial image."""
    from matplotlib.figure import Figure

    magnitudes = [(name, p.abs().amax(0).cpu().numpy()) for name, p in perturbations]
    top = max(float(m.max()) for _, m in magnitudes) or 1.0
    panels = [("image", np.asarray(image))]
    if saliency is not None:
        panels[0] = ("map", np.asarray(overlay(Image.fromarray(image), saliency.cpu().numpy())))
    # A square-root scale shared by all panels: small steps stay visible next to a peak,
    # and equal colours mean equal perturbation in every panel.
    panels += [(name, colorize(np.sqrt(m / top), "inferno")) for name, m in magnitudes]
    panels.append(("adversarial", adversarial))
    height, width = image.shape[:2]
    panel = 2.4  # inches per panel's height; widths follow the image's aspect
    figure = Figure(figsize=(len(panels) * panel * width / height + 0.3, panel + 0.4), dpi=120)
    axes = figure.subplots(1, len(panels))
    for axis, (name, picture) in zip(axes, panels, strict=True):
        axis.imshow(picture)
        axis.set_title(titles.get(name, name), fontsize=7)
        axis.axis("off")
    figure.tight_layout()
    save_figure(figure, path)


# ---------------------------------------------------------------------------------------
# Sanity and evaluation figures
# ---------------------------------------------------------------------------------------


def sanity_figure(
    result,
    image: np.ndarray,
    path: str | Path,
    index: int = 0,
    title: str | None = None,
    cmap: str = "jet",
    dpi: int = 72,
) -> None:
    """Adebayo et al.'s Figure 1 layout for a ``SanityResult``: one row per method, one
    column per randomisation step (the trained model's map first), the photo on the left.
    Written as a 256-colour PNG: colour-mapped maps lose nothing visible.

    image: (H, W, 3) uint8 at the maps' size; index: which image of the batch.
    """
    from matplotlib.figure import Figure

    methods = list(result.maps)
    columns = len(result.labels) + 1
    height, width = image.shape[:2]
    cell = 1.25
    figure = Figure(figsize=(cell * columns, cell * len(methods) * height / width + 0.9), dpi=dpi)
    axes = figure.subplots(len(methods), columns, squeeze=False)
    for row, method in enumerate(methods):
        for column in range(columns):
            axis = axes[row][column]
            axis.set_xticks([])
            axis.set_yticks([])
            if column == 0:
                axis.imshow(image)
                axis.set_ylabel(method, fontsize=9)
            else:
                axis.imshow(result.maps[method][column - 1, index], cmap=cmap, vmin=0, vmax=1)
            if row == 0:
                label = "image" if column == 0 else result.labels[column - 1]
                axis.set_title(label.replace("+", "+\n"), fontsize=7, rotation=0)
    mode = "cascading" if result.mode == "cascading" else "independent"
    figure.suptitle(title or f"{mode} randomisation, from the logits down", fontsize=9)
    figure.tight_layout(pad=0.3, h_pad=0.2, w_pad=0.2)
    save_figure(figure, path, colors=256, dither=False)


def similarity_figure(
    means: dict[str, dict[str, list[float]]], labels: Sequence[str], path: str | Path, mode: str
) -> None:
    """Similarity to the trained model's map against the randomisation step, one panel
    per measure, one line per method.

    means: measure -> method -> mean similarity per step (labels[k] for step k + 1).
    """
    from matplotlib.figure import Figure

    measures = list(means)
    figure = Figure(figsize=(3.6 * len(measures), 3.6), dpi=100)
    axes = figure.subplots(1, len(measures), squeeze=False)
    steps = np.arange(1, len(labels) + 1)
    for axis, measure in zip(axes[0], measures, strict=True):
        for method, values in means[measure].items():
            axis.plot(steps, values, marker="o", markersize=3, label=method)
        axis.axhline(0, color="grey", linewidth=0.8)
        axis.set_title(measure.replace("_", " "), fontsize=10)
        axis.set_xticks(steps, labels, rotation=70, fontsize=7)
        axis.set_ylim(-0.3, 1.05)
        axis.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"similarity to the trained map ({mode})")
    axes[0][-1].legend(fontsize=8)
    figure.tight_layout()
    save_figure(figure, path)


def curves_figure(
    curves: dict[tuple[str, str], list[np.ndarray]],
    path: str | Path,
    lower_is_better: Sequence[str] = ("deletion",),
) -> bool:
    """Mean insertion and deletion curves per method (one panel each) as a PNG.

    curves: (method, "insertion"|"deletion") -> list of per-unit curves (steps + 1,).
    Returns False (and writes nothing) when there are no curves.
    """
    from matplotlib.figure import Figure

    from .metrics import area_under_curve

    kinds = [k for k in ("insertion", "deletion") if any(kind == k for _, kind in curves)]
    if not kinds:
        return False
    figure = Figure(figsize=(5.5 * len(kinds), 4), dpi=100)
    axes = figure.subplots(1, len(kinds), squeeze=False)
    for axis, kind in zip(axes[0], kinds, strict=True):
        for (method, this), stack in curves.items():
            if this != kind or not stack:
                continue
            if len({len(c) for c in stack}) != 1:
                continue  # runs with different step counts cannot be averaged
            mean = np.mean(np.stack(stack), 0)
            fractions = np.linspace(0, 1, mean.size)
            area = float(np.mean([float(area_under_curve(c)) for c in stack]))
            axis.plot(fractions, mean, label=f"{method} (AUC {area:.3f})")
        better = "lower" if kind in lower_is_better else "higher"
        count = max(len(stack) for (_, this), stack in curves.items() if this == kind)
        axis.set_title(f"{kind} ({better} is better), mean over {count} pairs")
        axis.set_xlabel(f"fraction of pixels {'removed' if kind == 'deletion' else 'inserted'}")
        axis.set_ylabel("probability of the class")
        axis.set_xlim(0, 1)
        axis.set_ylim(bottom=0)
        axis.legend()
        axis.grid(alpha=0.3)
    figure.tight_layout()
    save_figure(figure, path)
    return True
