"""The evaluation loop: saliency methods scored on annotated images.

Two layers, so that the work can later be spread over machines (for example with
Ray's ``map_batches``) without touching the maths:

- pure functions: ``load_item(record, prep) -> Item`` reads and preprocesses one image,
  and ``Evaluator(items) -> rows`` scores a batch of loaded items with every method and
  metric and returns plain dict rows; neither writes anything;
- ``ResultStore`` appends rows to CSV files as they come, one record at a time, and
  lets an interrupted run resume (``cameras evaluate --resume``); ``summarise`` and
  ``plot_curves`` turn the rows into the summary table and the curve figure.

Each annotated (image, class) pair is one unit: the class is explained, and every
metric uses that class. Pointing and energy are measured on the map resized to the
image's own size against the original boxes; map density and insertion/deletion run
at the model input's size (see ``cameras.metrics``).
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .capture import model_device
from .datasets import Record, check_record
from .images import ImageError, load_image, resize_map
from .methods import METHODS, SaliencyMethod
from .metrics import (
    deletion,
    energy_pointing_game,
    insertion,
    map_density,
    pointing_game,
)
from .metrics.insertion import DEFAULT_STEPS
from .metrics.pointing import DEFAULT_TOLERANCE

METRICS = ("pointing", "energy", "rho_plus", "rho_minus", "insertion", "deletion")
LOWER_IS_BETTER = {"rho_minus", "deletion"}
DEFAULT_METHODS = ("cameras", "gradcam", "gradcam++", "layercam")
RESULT_FIELDS = [
    "record",
    "file",
    "class_index",
    "class_name",
    "method",
    "top1",
    "probability",
    *METRICS,
    "seconds",
]
CURVE_FIELDS = ["record", "class_index", "method", "kind", "values"]


# --------------------------------------------------------------------------------------
# Loading (runs in DataLoader worker processes)
# --------------------------------------------------------------------------------------


@dataclass
class Item:
    """One record, loaded: the model input and the record checked against the image.

    x: (3, h, w) model input, or None when the record cannot be evaluated (see error).
    image_size: (width, height) of the original image.
    problems: messages about objects dropped (unknown class, box outside the image...).
    error: why the whole record is skipped, or None.
    """

    record: Record
    x: torch.Tensor | None
    image_size: tuple[int, int] | None
    problems: list[str] = field(default_factory=list)
    error: str | None = None


def load_item(record: Record, prep) -> Item:
    """Read, check and preprocess one record's image; never raises for bad data."""
    try:
        image = load_image(record.file)
    except ImageError as error:
        return Item(record, None, None, list(record.problems), str(error))
    checked, problems = check_record(record, image.width, image.height)
    if not checked.objects:
        return Item(checked, None, image.size, problems, f"{record.file}: no usable objects")
    return Item(checked, prep(image), image.size, problems)


class RecordDataset(torch.utils.data.Dataset):
    """``load_item`` over a list of records, for a ``DataLoader`` with worker processes."""

    def __init__(self, records: Sequence[Record], prep) -> None:
        self.records = list(records)
        self.prep = prep

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Item:
        return load_item(self.records[index], self.prep)


def collate_items(items: list[Item]) -> list[Item]:
    """Keep a loader batch as a list: images differ in size."""
    return items


# --------------------------------------------------------------------------------------
# Scoring (pure)
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvalSettings:
    """What to compute.

    methods: names from ``cameras.METHODS``; metrics: names from ``METRICS``.
    steps: insertion/deletion steps; tolerance: pointing game, in original pixels.
    batch_size: images per forward pass (maps, masked images, curve steps).
    scales: CAMERAS shorter-side sizes (None: its default rule); layer: None for auto.
    fill: deletion's constant ("mean" or "black", see ``cameras.metrics.insertion``).
    """

    methods: tuple[str, ...] = DEFAULT_METHODS
    metrics: tuple[str, ...] = METRICS
    steps: int = DEFAULT_STEPS
    tolerance: float = DEFAULT_TOLERANCE
    batch_size: int = 16
    scales: tuple[int, ...] | None = None
    layer: str | None = None
    fill: str = "mean"

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise ValueError(
                f"methods: unknown {', '.join(unknown) or '(none given)'}; "
                f"choose from {', '.join(METHODS)}"
            )
        unknown = [m for m in self.metrics if m not in METRICS]
        if unknown or not self.metrics:
            raise ValueError(
                f"metrics: unknown {', '.join(unknown) or '(none given)'}; "
                f"choose from {', '.join(METRICS)}"
            )
        if self.steps < 1:
            raise ValueError(f"steps must be at least 1, got {self.steps}")
        if self.batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {self.batch_size}")
        if self.tolerance < 0:
            raise ValueError(f"tolerance must be non-negative, got {self.tolerance}")


def make_method(
    name: str,
    model: nn.Module,
    classes: Sequence[str] | None,
    layer: str | None = None,
    scales: Sequence[int] | None = None,
) -> SaliencyMethod:
    """A saliency method by name (``scales`` only applies to CAMERAS)."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")
    extra = {"scales": scales} if name == "cameras" else {}
    return METHODS[name](model, layer=layer, class_names=classes, **extra)


class Evaluator:
    """Scores batches of loaded items: ``rows = Evaluator(model, prep, ...)(items)``.

    The call is a pure function of its items (no files, no state kept between calls),
    so it can run anywhere the model can. Each returned row is one (record, class,
    method) with the columns of ``RESULT_FIELDS`` plus ``insertion_curve`` and
    ``deletion_curve`` (lists of steps + 1 probabilities) when those metrics are on.
    Metrics not asked for are None.
    """

    def __init__(
        self,
        model: nn.Module,
        prep,
        classes: Sequence[str] | None = None,
        settings: EvalSettings | None = None,
    ) -> None:
        self.model = model
        self.prep = prep
        self.classes = list(classes) if classes is not None else None
        self.settings = settings or EvalSettings()
        first = make_method(self.settings.methods[0], model, classes, self.settings.layer)
        # One layer for every method: resolved once, so all explain the same features.
        self.layer = first.layer_name
        self.methods = {
            name: make_method(name, model, classes, self.layer, self.settings.scales)
            for name in self.settings.methods
        }

    def __call__(self, items: Sequence[Item]) -> list[dict]:
        units = [
            (item, index) for item in items if item.x is not None for index in item.record.objects
        ]
        groups: dict[tuple[int, ...], list[int]] = {}
        for u, (item, _) in enumerate(units):
            groups.setdefault(tuple(item.x.shape), []).append(u)
        rows: dict[int, list[dict]] = {}
        size = self.settings.batch_size
        for members in groups.values():
            for first in range(0, len(members), size):
                part = members[first : first + size]
                scored = self._score([units[u] for u in part])
                rows.update(zip(part, scored, strict=True))
        # Rows in input order (item, then class, then method), whatever the grouping.
        return [row for u in range(len(units)) for row in rows[u]]

    def _score(self, units: list[tuple[Item, int]]) -> list[list[dict]]:
        """Rows for same-size units, one list (one row per method) per unit."""
        settings, wanted = self.settings, set(self.settings.metrics)
        device = model_device(self.model)
        x = torch.stack([item.x for item, _ in units]).to(device)
        targets = [index for _, index in units]
        out: list[list[dict]] = [[] for _ in units]
        for name, method in self.methods.items():
            started = time.perf_counter()
            explanation = method(x, targets=targets)
            seconds = (time.perf_counter() - started) / len(units)
            maps = explanation.maps.to(device)
            scores: dict[str, list] = {}
            curves: dict[str, np.ndarray] = {}
            if wanted & {"pointing", "energy"}:
                full = [
                    resize_map(maps[j], item.image_size[1], item.image_size[0])
                    for j, (item, _) in enumerate(units)
                ]
                boxes = [item.record.objects[index] for item, index in units]
                if "pointing" in wanted:
                    scores["pointing"] = pointing_game(full, boxes, settings.tolerance).tolist()
                if "energy" in wanted:
                    scores["energy"] = energy_pointing_game(full, boxes).tolist()
            if wanted & {"rho_plus", "rho_minus"}:
                plus, minus = map_density(
                    self.model, x, maps, targets, self.prep, settings.batch_size
                )
                scores["rho_plus"], scores["rho_minus"] = plus.tolist(), minus.tolist()
            if "insertion" in wanted:
                result = insertion(
                    self.model, x, maps, targets, settings.steps, self.prep, settings.batch_size
                )
                scores["insertion"], curves["insertion"] = result.auc.tolist(), result.curves
            if "deletion" in wanted:
                result = deletion(
                    self.model,
                    x,
                    maps,
                    targets,
                    settings.steps,
                    self.prep,
                    settings.batch_size,
                    settings.fill,
                )
                scores["deletion"], curves["deletion"] = result.auc.tolist(), result.curves
            probabilities = explanation.probabilities.float().cpu()
            for j, (item, index) in enumerate(units):
                row = {
                    "record": item.record.key,
                    "file": str(item.record.file),
                    "class_index": index,
                    "class_name": self.classes[index] if self.classes else "",
                    "method": name,
                    "top1": int(probabilities[j].argmax()),
                    "probability": float(probabilities[j, index]),
                    "seconds": seconds,
                }
                for metric in METRICS:
                    row[metric] = scores[metric][j] if metric in scores else None
                for kind, values in curves.items():
                    row[f"{kind}_curve"] = values[j].tolist()
                out[j].append(row)
        return out


# --------------------------------------------------------------------------------------
# Summaries
# --------------------------------------------------------------------------------------


def t_quantile_975(dof: int) -> float:
    """The 97.5 % quantile of Student's t with ``dof`` degrees of freedom."""
    from scipy.stats import t

    return float(t.ppf(0.975, dof))


@dataclass
class Summary:
    """Mean and 95 % confidence interval (Student t) of one metric for one method.

    n: finite values used; missing: values that were NaN (undefined, e.g. rho_plus of
    an all-zero map) and left out; half_width: NaN when n < 2.
    """

    method: str
    metric: str
    n: int
    missing: int
    mean: float
    half_width: float

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width


def summarise(
    rows: Sequence[dict], methods: Sequence[str], metrics: Sequence[str]
) -> list[Summary]:
    """One Summary per (method, metric), in the order given."""
    out = []
    for method in methods:
        mine = [r for r in rows if r["method"] == method]
        for metric in metrics:
            values = np.array(
                [float(r[metric]) for r in mine if r.get(metric) not in (None, "")], np.float64
            )
            finite = values[np.isfinite(values)]
            n = finite.size
            mean = float(finite.mean()) if n else math.nan
            half = (
                t_quantile_975(n - 1) * float(finite.std(ddof=1)) / math.sqrt(n)
                if n >= 2
                else math.nan
            )
            out.append(Summary(method, metric, n, int(values.size - n), mean, half))
    return out


def summary_markdown(summaries: Sequence[Summary], digits: int = 3) -> str:
    """The summary as a markdown table: one row per method, one column per metric,
    cells ``mean ± half-width`` of the 95 % confidence interval."""
    methods = list(dict.fromkeys(s.method for s in summaries))
    metrics = list(dict.fromkeys(s.metric for s in summaries))
    cell = {(s.method, s.metric): s for s in summaries}
    counts = {s.n for s in summaries}
    arrows = [f"{m} {'↓' if m in LOWER_IS_BETTER else '↑'}" for m in metrics]
    lines = [
        "| method | " + " | ".join(arrows) + " |",
        "|---|" + "---|" * len(metrics),
    ]
    for method in methods:
        parts = []
        for metric in metrics:
            s = cell[(method, metric)]
            text = "n/a" if s.n == 0 else f"{s.mean:.{digits}f}"
            if s.n >= 2:
                text += f" ± {s.half_width:.{digits}f}"
            if len(counts) > 1 or s.missing:
                text += f" (n={s.n})"
            parts.append(text)
        lines.append(f"| {method} | " + " | ".join(parts) + " |")
    n = max(counts) if counts else 0
    lines.append("")
    lines.append(
        f"Mean ± half-width of the 95 % confidence interval (Student t) over {n} "
        "image-class pairs; ↑ higher is better, ↓ lower is better."
    )
    return "\n".join(lines)


def write_summary(summaries: Sequence[Summary], path: Path) -> None:
    """summary.csv: method, metric, n, missing, mean, ci_low, ci_high."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["method", "metric", "n", "missing", "mean", "ci_low", "ci_high"])
        for s in summaries:
            writer.writerow([s.method, s.metric, s.n, s.missing, s.mean, s.low, s.high])


def plot_curves(curves: dict[tuple[str, str], list[np.ndarray]], path: Path) -> bool:
    """Mean insertion and deletion curves per method (one panel each) as a PNG.

    curves: (method, "insertion"|"deletion") -> list of per-unit curves (steps + 1,).
    Returns False (and writes nothing) when there are no curves.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = [k for k in ("insertion", "deletion") if any(kind == k for _, kind in curves)]
    if not kinds:
        return False
    figure, axes = plt.subplots(1, len(kinds), figsize=(5.5 * len(kinds), 4), squeeze=False)
    for axis, kind in zip(axes[0], kinds, strict=True):
        for (method, this), stack in curves.items():
            if this != kind or not stack:
                continue
            lengths = {len(c) for c in stack}
            if len(lengths) != 1:
                continue  # runs with different step counts cannot be averaged
            mean = np.mean(np.stack(stack), 0)
            fractions = np.linspace(0, 1, mean.size)
            area = float(np.mean([_auc(c) for c in stack]))
            axis.plot(fractions, mean, label=f"{method} (AUC {area:.3f})")
        better = "lower" if kind in LOWER_IS_BETTER else "higher"
        count = max(len(stack) for (_, this), stack in curves.items() if this == kind)
        axis.set_title(f"{kind} ({better} is better), mean over {count} pairs")
        axis.set_xlabel(f"fraction of pixels {'removed' if kind == 'deletion' else 'inserted'}")
        axis.set_ylabel("probability of the class")
        axis.set_xlim(0, 1)
        axis.set_ylim(bottom=0)
        axis.legend()
        axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True


def _auc(curve: np.ndarray) -> float:
    from .metrics import area_under_curve

    return float(area_under_curve(curve))


# --------------------------------------------------------------------------------------
# Writing as it goes, and resuming
# --------------------------------------------------------------------------------------


class ResumeError(ValueError):
    """The output folder holds a run that cannot be continued with these settings."""


class ResultStore:
    """Per-record results on disk, written as they come and safe to resume.

    Files in ``out``: ``results.csv`` (RESULT_FIELDS, one row per record, class and
    method), ``curves.csv`` (record, class_index, method, kind, space-separated
    probabilities), ``done.txt`` (keys of finished records), ``problems.txt`` (skipped
    records and dropped objects), ``run.json`` (the settings).

    A record's rows are appended and flushed to disk first and its key is added to
    ``done.txt`` after; so on resume a record counts as finished only when all its rows
    are safely written, and rows of an unfinished record (cut off mid-way) are removed.
    """

    def __init__(self, out: str | Path) -> None:
        self.out = Path(out)
        self.results = self.out / "results.csv"
        self.curves_path = self.out / "curves.csv"
        self.done_path = self.out / "done.txt"
        self.problems_path = self.out / "problems.txt"
        self.run_path = self.out / "run.json"

    def start(self, settings: dict, resume: bool) -> set[str]:
        """Prepare the folder; returns the keys of records already finished.

        Without ``resume`` the folder must not hold results. With it, the settings must
        match the earlier run's (ResumeError names the first difference).
        """
        self.out.mkdir(parents=True, exist_ok=True)
        existing = self.results.exists() or self.done_path.exists()
        if existing and not resume:
            raise ResumeError(
                f"{self.out} already holds results; pass --resume to continue that run "
                "or choose another --out"
            )
        finished: set[str] = set()
        if existing:
            earlier = self._read_settings()
            for key in sorted(set(earlier) | set(settings)):
                if earlier.get(key) != settings.get(key):
                    raise ResumeError(
                        f"{self.out}: cannot resume, {key} was {earlier.get(key)!r} and is "
                        f"now {settings.get(key)!r}"
                    )
            finished = self._repair()
        self.run_path.write_text(json.dumps(settings, indent=1, sort_keys=True) + "\n")
        for path, header in ((self.results, RESULT_FIELDS), (self.curves_path, CURVE_FIELDS)):
            if not path.exists():
                with open(path, "w", newline="") as handle:
                    csv.writer(handle).writerow(header)
        self.done_path.touch()
        return finished

    def _read_settings(self) -> dict:
        try:
            return json.loads(self.run_path.read_text())
        except (OSError, json.JSONDecodeError):
            raise ResumeError(f"{self.run_path}: missing or unreadable; cannot resume") from None

    def _repair(self) -> set[str]:
        """Keep only complete lines of finished records (see the class docstring)."""
        finished = set(_complete_lines(self.done_path))
        _rewrite(self.done_path, [k + "\n" for k in sorted(finished)])
        for path, header in ((self.results, RESULT_FIELDS), (self.curves_path, CURVE_FIELDS)):
            if not path.exists():
                continue
            lines = _complete_lines(path)
            kept = [lines[0] + "\n"] if lines else [",".join(header) + "\n"]
            for row in csv.DictReader(lines):
                if row.get("record") in finished and None not in row.values():
                    kept.append(_csv_line([row[h] for h in header]))
            _rewrite(path, kept)
        return finished

    def add(self, key: str, rows: Sequence[dict]) -> None:
        """Append one finished record's rows, then mark it done (each write flushed)."""
        result_lines = [_csv_line([_cell(r.get(h)) for h in RESULT_FIELDS]) for r in rows]
        curve_lines = [
            _csv_line(
                [r["record"], r["class_index"], r["method"], kind, _curve(r[f"{kind}_curve"])]
            )
            for r in rows
            for kind in ("insertion", "deletion")
            if f"{kind}_curve" in r
        ]
        _append(self.results, result_lines)
        _append(self.curves_path, curve_lines)
        _append(self.done_path, [key + "\n"])

    def problem(self, line: str) -> None:
        _append(self.problems_path, [line.rstrip("\n") + "\n"])

    def rows(self) -> list[dict]:
        """All result rows on disk, metric columns as floats (None where empty)."""
        with open(self.results, newline="") as handle:
            rows = list(csv.DictReader(handle))
        for row in rows:
            for metric in METRICS:
                row[metric] = float(row[metric]) if row.get(metric) not in (None, "") else None
        return rows

    def curves(self) -> dict[tuple[str, str], list[np.ndarray]]:
        """(method, kind) -> the curves on disk, in file order."""
        out: dict[tuple[str, str], list[np.ndarray]] = {}
        if not self.curves_path.exists():
            return out
        with open(self.curves_path, newline="") as handle:
            for row in csv.DictReader(handle):
                values = np.array([float(v) for v in row["values"].split()])
                out.setdefault((row["method"], row["kind"]), []).append(values)
        return out


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _curve(values: Sequence[float]) -> str:
    return " ".join(f"{v:.6g}" for v in values)


def _csv_line(cells: Sequence[object]) -> str:
    import io

    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(cells)
    return buffer.getvalue()


def _append(path: Path, lines: Sequence[str]) -> None:
    if not lines:
        return
    with open(path, "a", newline="") as handle:
        handle.write("".join(lines))
        handle.flush()
        os.fsync(handle.fileno())


def _complete_lines(path: Path) -> list[str]:
    """The file's lines without their newline, dropping a last line cut off mid-write."""
    if not path.exists():
        return []
    text = path.read_text()
    lines = text.split("\n")
    return [line for line in lines[:-1] if line]  # the part after the last "\n" is partial


def _rewrite(path: Path, lines: Sequence[str]) -> None:
    """Replace a file atomically (a crash leaves either the old or the new file)."""
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "w", newline="") as handle:
        handle.write("".join(lines))
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def settings_record(settings: EvalSettings, **extra) -> dict:
    """The settings as a JSON-able dict (for run.json and the resume check)."""
    data = asdict(settings)
    data["methods"] = list(settings.methods)
    data["metrics"] = list(settings.metrics)
    data["scales"] = list(settings.scales) if settings.scales is not None else None
    data.update(extra)
    return data
