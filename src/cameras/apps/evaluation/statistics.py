"""Evaluation, statistics: rows -> mean and 95 % confidence interval per method and metric."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .scoring import LOWER_IS_BETTER


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
