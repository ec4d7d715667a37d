"""Evaluation, storage: rows written to CSV as they come, safe to resume; the summary file."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ...core.files import append_lines, complete_lines, open_atomically, write_atomically
from .scoring import METRICS, RESULT_FIELDS, EvalSettings
from .statistics import Summary

CURVE_FIELDS = ["record", "class_index", "method", "kind", "values"]


def write_summary(summaries: Sequence[Summary], path: Path) -> None:
    """summary.csv: method, metric, n, missing, mean, ci_low, ci_high."""
    with open_atomically(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["method", "metric", "n", "missing", "mean", "ci_low", "ci_high"])
        for s in summaries:
            writer.writerow([s.method, s.metric, s.n, s.missing, s.mean, s.low, s.high])


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
        write_atomically({self.run_path: json.dumps(settings, indent=1, sort_keys=True) + "\n"})
        for path, header in ((self.results, RESULT_FIELDS), (self.curves_path, CURVE_FIELDS)):
            if not path.exists():
                write_atomically({path: _csv_line(header)})
        if not self.done_path.exists():
            write_atomically({self.done_path: ""})
        return finished

    def _read_settings(self) -> dict:
        try:
            return json.loads(self.run_path.read_text())
        except (OSError, json.JSONDecodeError):
            raise ResumeError(f"{self.run_path}: missing or unreadable; cannot resume") from None

    def _repair(self) -> set[str]:
        """Keep only complete lines of finished records (see the class docstring)."""
        finished = set(complete_lines(self.done_path))
        _rewrite(self.done_path, [k + "\n" for k in sorted(finished)])
        for path, header in ((self.results, RESULT_FIELDS), (self.curves_path, CURVE_FIELDS)):
            if not path.exists():
                continue
            lines = complete_lines(path)
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
        append_lines(self.results, result_lines)
        append_lines(self.curves_path, curve_lines)
        append_lines(self.done_path, [key + "\n"])

    def problem(self, line: str) -> None:
        append_lines(self.problems_path, [line.rstrip("\n") + "\n"])

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


def _rewrite(path: Path, lines: Sequence[str]) -> None:
    """Replace a file atomically (a crash leaves either the old or the new file)."""
    write_atomically({path: "".join(lines)})


def settings_record(settings: EvalSettings, **extra) -> dict:
    """The settings as a JSON-able dict (for run.json and the resume check)."""
    data = asdict(settings)
    data["methods"] = list(settings.methods)
    data["metrics"] = list(settings.metrics)
    data["scales"] = list(settings.scales) if settings.scales is not None else None
    data.update(extra)
    return data
