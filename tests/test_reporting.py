"""The numeric summaries and plot tables DVC compares (opensora_mlops.reporting)."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from opensora_mlops.reporting import adherence_scores, loss_curve, numeric_leaves, val_loss_by_timestep


def test_numeric_leaves_keep_numbers_and_nesting_only():
    report = {
        "clips": 10, "seconds": 12.5, "root": "data/01_raw", "passed": True, "missing": None,
        "nan": math.nan, "inf": math.inf, "methods": ["farneback"],
        "cut_detection": {"precision": 1.0, "tolerance": 1.0, "per_video": {"a.mp4": {"detected": [56]}}},
        "bucket_config": {"144p": {"1": [1.0, 8]}},
    }
    assert numeric_leaves(report, drop=("bucket_config", "cut_detection.tolerance")) == {
        "clips": 10, "seconds": 12.5, "cut_detection": {"precision": 1.0}}
    # a key dropped by name goes at any depth; a dotted path only where it points
    assert numeric_leaves({"a": {"tolerance": 1, "b": 2}, "tolerance": 3}, drop=("a.tolerance",)) == {
        "a": {"b": 2}, "tolerance": 3}
    assert numeric_leaves({"a": {"x": 1}, "b": {"x": 2}}, drop=("x",)) == {}
    json.dumps(numeric_leaves(report))  # what DVC reads: plain JSON


def _events(path, events):
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    return path


def test_loss_curve_follows_restarts_and_resumes(tmp_path):
    log = _events(tmp_path / "events.jsonl", [
        {"event": "start", "step": 0},
        *({"event": "metrics", "step": s, "loss": 10.0 + s} for s in (1, 2, 3)),
        {"event": "restart", "reason": "configuration changed"},  # earlier attempt: discarded
        {"event": "start", "step": 0},
        *({"event": "metrics", "step": s, "loss": 1.0 / s} for s in (1, 2, 3, 4)),
        {"event": "checkpoint", "step": 2},
        # killed after step 4, resumed from the step-2 checkpoint: steps 3-4 are trained again
        {"event": "resume", "step": 2}, {"event": "start", "step": 2},
        *({"event": "metrics", "step": s, "loss": 0.5 / s} for s in (3, 4, 5)),
    ])
    curve = loss_curve(log)
    assert list(curve.columns) == ["step", "loss"]
    assert curve["step"].tolist() == [1, 2, 3, 4, 5]
    assert curve["loss"].tolist() == pytest.approx([1.0, 0.5, 0.5 / 3, 0.5 / 4, 0.1])


def test_loss_curve_of_a_killed_run_and_bad_logs(tmp_path):
    log = tmp_path / "events.jsonl"
    log.write_text(json.dumps({"event": "metrics", "step": 1, "loss": 2.0}) + '\n{"event": "metr')
    assert loss_curve(log)["loss"].tolist() == [2.0]  # the half-written last line is ignored
    log.write_text('{"event": "metr\n' + json.dumps({"event": "metrics", "step": 1, "loss": 2.0}) + "\n")
    with pytest.raises(ValueError, match="events.jsonl:1"):
        loss_curve(log)
    with pytest.raises(FileNotFoundError, match="no training event log"):
        loss_curve(tmp_path / "missing.jsonl")
    log.write_text("")
    assert loss_curve(log).empty


def test_val_loss_by_timestep_is_one_column_per_group():
    table = pd.DataFrame({
        "group": ["trained", "untrained"] * 4,
        "clip": [0, 0, 0, 0, 1, 1, 1, 1],
        "range_start": [0, 0, 500, 500, 0, 0, 500, 500],
        "range_end": [500, 500, 1000, 1000, 500, 500, 1000, 1000],
        "loss": [1.0, 3.0, 2.0, 4.0, 3.0, 5.0, 4.0, 6.0],
    })
    out = val_loss_by_timestep(table)
    assert out.to_dict("list") == {"timestep": [250.0, 750.0], "range": ["0-500", "500-1000"],
                                   "trained": [2.0, 3.0], "untrained": [4.0, 5.0]}
    assert list(val_loss_by_timestep(table.iloc[:0]).columns) == ["timestep", "range"]
    with pytest.raises(KeyError, match="range_end"):
        val_loss_by_timestep(table.drop(columns=["range_end"]))


def test_adherence_scores_one_labelled_row_per_group_and_criterion():
    summary = {"trained": {"colour": 0.5, "shape": 0.25, "direction": 1.0, "adherence": 0.6, "n": 4.0},
               "real": {"colour": 1.0, "adherence": math.nan}, "note": "not a group"}
    out = adherence_scores(summary)
    assert out["label"].tolist() == ["trained: colour", "trained: shape", "trained: direction",
                                     "trained: adherence", "real: colour"]
    assert out["score"].tolist() == [0.5, 0.25, 1.0, 0.6, 1.0]
    assert adherence_scores({}).empty and list(adherence_scores({}).columns) == [
        "label", "group", "criterion", "score"]
