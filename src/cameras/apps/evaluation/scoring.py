"""Evaluation, scoring: loaded items -> one plain dict row per (record, class, method).

``Evaluator(items) -> rows`` is a pure function of its items (no files, no state kept
between calls), so it can run wherever the model can (a local loop, a worker pool).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ...core.capture import model_device
from ...core.images import resize_map
from ...core.targets import Box
from ...methods import check_method_names
from ...session import Session
from ..detection import box_in_input, is_detector
from ..metrics import (
    deletion,
    energy_pointing_game,
    insertion,
    map_density,
    pointing_game,
)
from ..metrics.insertion import DEFAULT_STEPS
from ..metrics.pointing import DEFAULT_TOLERANCE, pointing_hit
from .loading import Item

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


@dataclass(frozen=True)
class EvalSettings:
    """What to compute.

    methods: names from ``cameras.METHODS``; metrics: names from ``METRICS``.
    steps: insertion/deletion steps; tolerance: pointing game, in original pixels.
    batch_size: images per forward pass (maps, masked images, curve steps).
    scales: CAMERAS shorter-side sizes (None: its default rule); layer: None for auto.
    fill: deletion's constant ("mean" or "black", see ``cameras.apps.metrics.insertion``).
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
        if not self.methods:
            raise ValueError("methods: give at least one method")
        check_method_names(self.methods)
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


class Evaluator:
    """Scores batches of loaded items: ``rows = Evaluator(session, settings=...)(items)``.

    source: a ``Session`` (any kind of model), or a model with ``prep`` and ``classes``
    (a session is made over it, on ``settings.layer`` / ``settings.scales``). The
    session's methods are the ones scored; the metrics run its ``scorer``.

    The call is a pure function of its items (no files, no state kept between calls),
    so it can run anywhere the model can. Each returned row is one (record, class,
    method) with the columns of ``RESULT_FIELDS`` plus ``insertion_curve`` and
    ``deletion_curve`` (lists of steps + 1 probabilities) when those metrics are on.
    Metrics not asked for are None.

    A detector (``apps.detection.is_detector``) is scored per annotated box instead: each
    box is explained as ``Box(box, its label)`` and gets its own rows, with the pointing
    game (a hit when the map's maximum is within the tolerance of that box) and the energy
    inside it; the other metrics, top1 and probability need class scores and are None.
    """

    def __init__(
        self,
        source: nn.Module | Session,
        prep=None,
        classes: Sequence[str] | None = None,
        settings: EvalSettings | None = None,
    ) -> None:
        self.settings = settings or EvalSettings()
        if not isinstance(source, Session):
            scales = self.settings.scales
            source = Session(source, prep, classes, layer=self.settings.layer, scales=scales)
        self.session = source
        self.model = source.scorer  # what the metrics query: a torch function of the input
        self.prep = source.prep
        self.classes = source.class_names
        # One layer for every method, found once, so all explain the same features.
        self.layer = source.layer
        self.methods = {name: source.method(name) for name in self.settings.methods}
        self.detector = is_detector(source.model)

    def __call__(self, items: Sequence[Item]) -> list[dict]:
        usable = [item for item in items if item.x is not None]
        if self.detector:  # one unit per annotated box, explained as that box
            units = [
                (item, index, box)
                for item in usable
                for index, boxes in item.record.objects.items()
                for box in boxes
            ]
        else:
            units = [(item, index) for item in usable for index in item.record.objects]
        score = self._score_boxes if self.detector else self._score
        groups: dict[tuple[int, ...], list[int]] = {}
        for u, unit in enumerate(units):
            groups.setdefault(tuple(unit[0].x.shape), []).append(u)
        rows: dict[int, list[dict]] = {}
        size = self.settings.batch_size
        for members in groups.values():
            for first in range(0, len(members), size):
                part = members[first : first + size]
                scored = score([units[u] for u in part])
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

    def _score_boxes(self, units: list[tuple[Item, int, tuple]]) -> list[list[dict]]:
        """Rows for same-size (item, label, box) units of a detector: pointing and energy
        against that one box, on the map at the image's own size."""
        wanted = set(self.settings.metrics)
        x = torch.stack([item.x for item, _, _ in units]).to(model_device(self.model))
        input_size = tuple(x.shape[2:])
        targets = [  # image_size is (width, height); box_in_input takes (height, width)
            Box(box_in_input(box, item.image_size[::-1], input_size), index)
            for item, index, box in units
        ]
        out: list[list[dict]] = [[] for _ in units]
        for name, method in self.methods.items():
            started = time.perf_counter()
            explanation = method(x, targets=targets)
            seconds = (time.perf_counter() - started) / len(units)
            for j, (item, index, box) in enumerate(units):
                full = resize_map(explanation.maps[j], item.image_size[1], item.image_size[0])
                row = dict.fromkeys(RESULT_FIELDS)
                row.update(
                    record=item.record.key,
                    file=str(item.record.file),
                    class_index=index,
                    class_name=self.classes[index] if self.classes else "",
                    method=name,
                    seconds=seconds,
                )
                if "pointing" in wanted:
                    row["pointing"] = float(pointing_hit(full, [box], self.settings.tolerance))
                if "energy" in wanted:
                    row["energy"] = float(energy_pointing_game([full], [[box]])[0])
                out[j].append(row)
        return out
