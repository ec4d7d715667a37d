"""The evaluation loop: saliency methods scored on annotated images.

Two layers, so that the work can later be spread over machines (for example with
Ray's ``map_batches``) without touching the maths:

- pure functions: ``load_item(record, prep) -> Item`` reads and preprocesses one image,
  and ``Evaluator(items) -> rows`` scores a batch of loaded items with every method and
  metric and returns plain dict rows; neither writes anything;
- ``ResultStore`` appends rows to CSV files as they come, one record at a time, and
  lets an interrupted run resume (``cameras evaluate --resume``); ``summarise`` and
  ``plot_curves`` turn the rows into the summary table and the curve figure.

One module per job: ``loading`` (record -> Item), ``scoring`` (items -> rows),
``statistics`` (rows -> Summary), ``storage`` (rows and summaries on disk); the curve
figure is drawn by ``cameras.apps.viz``. Every name stays importable from here.

Each annotated (image, class) pair is one unit: the class is explained, and every
metric uses that class. Pointing and energy are measured on the map resized to the
image's own size against the original boxes; map density and insertion/deletion run
at the model input's size (see ``cameras.apps.metrics``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .loading import Item, load_item
from .scoring import (
    DEFAULT_METHODS,
    LOWER_IS_BETTER,
    METRICS,
    RESULT_FIELDS,
    EvalSettings,
    Evaluator,
)
from .statistics import Summary, summarise, summary_markdown, t_quantile_975
from .storage import CURVE_FIELDS, ResultStore, ResumeError, settings_record, write_summary


def plot_curves(curves: dict[tuple[str, str], list[np.ndarray]], path: Path) -> bool:
    """The mean insertion / deletion curves per method as a PNG (``viz.curves_figure``);
    False, and nothing written, when there are no curves."""
    from ..viz import curves_figure

    return curves_figure(curves, path, sorted(LOWER_IS_BETTER))


__all__ = [
    "CURVE_FIELDS",
    "DEFAULT_METHODS",
    "LOWER_IS_BETTER",
    "METRICS",
    "RESULT_FIELDS",
    "EvalSettings",
    "Evaluator",
    "Item",
    "ResultStore",
    "ResumeError",
    "Summary",
    "load_item",
    "plot_curves",
    "settings_record",
    "summarise",
    "summary_markdown",
    "t_quantile_975",
    "write_summary",
]
