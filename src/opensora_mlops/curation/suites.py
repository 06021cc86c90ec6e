"""Curation's data-contract suites, built on the shared ``clip_metadata``/``filtered_clips`` specs.

Changes to the shared specs: still images are one-frame clips without an fps (their scene times are
0 to 0), so "scene_end > scene_start" is checked for video rows only; the score and method columns are
required, camera_motion must be one of the classifier's labels, and ``source_path`` must be present.
"""

from __future__ import annotations

import pandas as pd

from opensora_mlops.curation.scorers import CAMERA_LABELS, SCORE_COLUMNS
from opensora_mlops.data import contracts

CLIP_SUITE = "curation_clip_metadata"
FILTERED_SUITE = "curation_filtered_clips"


def _scene_times_ordered(df: pd.DataFrame) -> pd.Series:
    video = df["fps"].astype(float).fillna(0) > 0
    return ~video | (df["scene_end"].astype(float) > df["scene_start"].astype(float))


def _curation_spec(base: str) -> dict:
    spec = contracts.get_suite_spec(base)
    spec["pairs"] = [p for p in spec["pairs"] if p.get("greater") != "scene_end"]
    spec["checks"] = [*spec["checks"], "scene_end_after_start_for_videos"]
    spec["columns"] = {
        **spec["columns"],
        "source_path": "str",
        **{c: ("str" if c == "camera_motion" else "number") for c in SCORE_COLUMNS},
        **{f"{c}_method": "str" for c in SCORE_COLUMNS},
    }
    spec["not_null"] = [*spec["not_null"], "aes", "flow", "ocr", "camera_motion",
                        *(f"{c}_method" for c in SCORE_COLUMNS)]
    spec["in_set"] = {**spec.get("in_set", {}), "camera_motion": list(CAMERA_LABELS)}
    return spec


def register_curation_suites() -> tuple[str, str]:
    """Register (idempotently) the clip-table and filtered-table suites; returns their names."""
    contracts.register_row_check(
        "scene_end_after_start_for_videos",
        "scene_end > scene_start on every video row (still images have no duration)",
        ("scene_start", "scene_end", "fps"),
        _scene_times_ordered,
    )
    contracts.register_suite(CLIP_SUITE, _curation_spec("clip_metadata"), replace=True)
    contracts.register_suite(FILTERED_SUITE, _curation_spec("filtered_clips"), replace=True)
    return CLIP_SUITE, FILTERED_SUITE


def validate_clips(df: pd.DataFrame, report_dir: str | None, suite: str = CLIP_SUITE, name: str | None = None):
    """Validate a curation table (raises ``contracts.ContractError`` with a readable report)."""
    register_curation_suites()
    spec = contracts.get_suite_spec(suite)
    if len(df) == 0:
        spec["min_rows"] = 0  # an empty stage is reported by the pipeline, not a broken contract
        return contracts.validate_table(df, spec, report_dir, name=name or suite)
    return contracts.validate_table(df, suite, report_dir, name=name)
