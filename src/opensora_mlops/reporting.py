"""Small numeric summaries and plot tables that version control can diff (DVC metrics and plots).

The pipelines' own reports (``data/08_reporting``) mix numbers with paths, method names and lists;
``dvc metrics diff`` and ``dvc exp show`` want numbers only, and ``dvc plots`` wants flat tables.
Everything here is a pure function of a pipeline's reporting output or of a training run's event log.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd


def numeric_leaves(values: Mapping[str, Any], drop: Iterable[str] = ()) -> dict[str, Any]:
    """The finite numbers of a nested mapping, nesting kept; strings, lists, booleans and ``None`` go,
    and so do mappings left empty. ``drop`` names keys to leave out, at any depth (``"bucket_config"``)
    or as a dotted path from the top (``"cut_detection.tolerance"``)."""
    dropped = set(drop)

    def walk(node: Mapping[str, Any], prefix: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in node.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            if str(key) in dropped or path in dropped:
                continue
            if isinstance(value, Mapping):
                inner = walk(value, path)
                if inner:
                    out[str(key)] = inner
            elif isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
                out[str(key)] = value
        return out

    return walk(values, "")


def loss_curve(events_path: str | Path) -> pd.DataFrame:
    """Training loss by step (columns ``step``, ``loss``) of the current run in a trainer's
    ``events.jsonl``.

    The file is appended to by every attempt in the run folder: a ``restart`` event (the configuration
    changed, training started over) discards what came before, and a ``start`` at step ``s`` (a resume
    from a checkpoint) discards steps after ``s`` logged by an attempt that did not reach its next
    checkpoint, so every step appears once with the loss of the attempt that counts.
    """
    path = Path(events_path)
    if not path.is_file():
        raise FileNotFoundError(f"no training event log at {path}")
    losses: dict[int, float] = {}
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except json.JSONDecodeError as error:
            if number == len(lines):  # the half-written last line of a killed run
                break
            raise ValueError(f"{path}:{number}: not a JSON event ({error})") from error
        kind = event.get("event")
        if kind == "restart":
            losses.clear()
        elif kind == "start":
            start = int(event.get("step", 0))
            losses = {step: loss for step, loss in losses.items() if step <= start}
        elif kind == "metrics" and "loss" in event:
            losses[int(event["step"])] = float(event["loss"])
    steps = sorted(losses)
    return pd.DataFrame({"step": steps, "loss": [losses[s] for s in steps]}, columns=["step", "loss"])


def val_loss_by_timestep(table: pd.DataFrame) -> pd.DataFrame:
    """Mean validation loss per timestep range, one column per model group: ``timestep`` (the range's
    midpoint), ``range`` (``"0-250"``) and e.g. ``trained``, ``untrained``. ``table`` has the columns
    ``group, range_start, range_end, loss`` (the evaluation pipeline's ``val_loss_table``)."""
    missing = {"group", "range_start", "range_end", "loss"} - set(table.columns)
    if missing:
        raise KeyError(f"validation loss table lacks columns {sorted(missing)}")
    if table.empty:
        return pd.DataFrame(columns=["timestep", "range"])
    means = table.groupby(["range_start", "range_end", "group"], sort=True)["loss"].mean().unstack("group")
    groups = list(dict.fromkeys(table["group"]))  # first-seen order: trained before untrained
    out = means[groups].reset_index()
    out.insert(0, "timestep", (out["range_start"] + out["range_end"]) / 2)
    out.insert(1, "range", [f"{int(a)}-{int(b)}" for a, b in zip(out["range_start"], out["range_end"])])
    out.columns.name = None
    return out.drop(columns=["range_start", "range_end"])


def adherence_scores(summary: Mapping[str, Mapping[str, Any]],
                     criteria: Iterable[str] = ("colour", "shape", "direction", "adherence")) -> pd.DataFrame:
    """Prompt adherence, one row per group and criterion (``label, group, criterion, score``; the label
    ``"trained: colour"`` names the bar in a chart), from the evaluation metrics' ``adherence`` block
    (``{group: {criterion: score}}``). A criterion a group was not scored on has no row."""
    rows = []
    for group, scores in summary.items():
        if not isinstance(scores, Mapping):
            continue
        for criterion in criteria:
            value = scores.get(criterion)
            if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
                rows.append({"label": f"{group}: {criterion}", "group": str(group), "criterion": criterion,
                             "score": float(value)})
    return pd.DataFrame(rows, columns=["label", "group", "criterion", "score"])


__all__ = ["adherence_scores", "loss_curve", "numeric_leaves", "val_loss_by_timestep"]
