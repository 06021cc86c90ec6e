"""Bucketing nodes: thin wrappers over :mod:`opensora_mlops.data.buckets` and the data contracts."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from opensora_mlops.config import ConfigError, check_keys, strict_dataclass  # noqa: E402
from opensora_mlops.data import contracts  # noqa: E402
from opensora_mlops.data.buckets import (  # noqa: E402
    BUCKET_COLUMNS,
    REASON_NO_FIT,
    REASON_NOT_DRAWN,
    StageBucketing,
    assign_buckets,
    bucket_columns_consistent,
    bucket_fits_sample,
)
from opensora_mlops.training.preflight import describe_buckets  # noqa: E402

log = logging.getLogger(__name__)

BUCKET_SUITE = "bucket_table"

contracts.register_row_check(
    "bucket_columns_consistent",
    "kept rows have a complete bucket (id = resolution/frames/ratio, batch size) and no drop reason; "
    "dropped rows have a reason and no bucket",
    ("keep", "bucket_id", "bucket_resolution", "bucket_num_frames", "ar_key", "batch_size", "drop_reason"),
    bucket_columns_consistent,
)
contracts.register_row_check(
    "bucket_fits_sample",
    "a kept row's bucket is no larger than the sample: frames (images only in 1-frame buckets), "
    "pixels >= 0.8 x the resolution's, bucket H x W from the aspect table",
    ("keep", "num_frames", "height", "width", "bucket_resolution", "bucket_num_frames", "ar_key",
     "bucket_height", "bucket_width"),
    bucket_fits_sample,
)


def _bucket_suite_spec() -> dict[str, Any]:
    """The shared ``filtered_clips`` spec plus the bucket columns. Still images have scene times 0 to 0,
    so the shared spec's "scene_end > scene_start" pair is left to curation's own contract."""
    base = contracts.get_suite_spec("filtered_clips")
    base["pairs"] = [p for p in base["pairs"] if p.get("greater") != "scene_end"]
    extra = {
        "description": "a stage's bucket table: its filtered clips, each with a bucket or a drop reason",
        "columns": {
            "bucket_id": "str", "bucket_resolution": "str", "bucket_num_frames": "int", "bucket_height": "int",
            "bucket_width": "int", "ar_key": "str", "keep": "bool", "batch_size": "int", "drop_reason": "str",
        },
        "not_null": ["keep"],
        "ranges": {"bucket_num_frames": {"min": 1}, "bucket_height": {"min": 1}, "bucket_width": {"min": 1},
                   "batch_size": {"min": 1}},
        "in_set": {"drop_reason": [REASON_NO_FIT, REASON_NOT_DRAWN]},
        "checks": ["bucket_columns_consistent", "bucket_fits_sample"],
    }  # fmt: skip
    return contracts.merge_specs(base, extra)


contracts.register_suite(BUCKET_SUITE, _bucket_suite_spec(), replace=True)


@dataclass(frozen=True)
class BucketingSettings:
    """``bucketing`` in parameters_bucketing.yml, apart from the per-stage blocks."""

    v11_compat: bool = False  # True: 1.1's assignment exactly (no fallback to fewer frames, fix #4)
    epoch: int = 0  # the epoch whose draws the stored table holds (the sampler redraws per epoch)
    contracts_dir: str | None = "data/08_reporting/contracts"


def parse_params(params: dict[str, Any], stage: str) -> tuple[BucketingSettings, StageBucketing]:
    """Strictly parse ``params:bucketing`` for ``stage``."""
    if not isinstance(params, dict):
        raise ConfigError(f"bucketing parameters must be a mapping, got {type(params).__name__}")
    check_keys(params, ["settings", "stages"], "bucketing")
    settings = strict_dataclass(BucketingSettings, params.get("settings") or {}, "bucketing.settings")
    stages = params.get("stages") or {}
    if stage not in stages:
        raise ConfigError(f"bucketing.stages has no {stage!r}; stages: {', '.join(map(str, stages)) or 'none'}")
    return settings, StageBucketing.from_params(stages[stage], f"bucketing.stages.{stage}")


def assign_stage_buckets(filtered_clips: pd.DataFrame, params: dict[str, Any], seed: int, stage: str) -> pd.DataFrame:
    """The stage's filtered clips with bucket columns (kept rows and dropped rows with a reason)."""
    settings, spec = parse_params(params, stage)
    table = assign_buckets(
        filtered_clips.reset_index(drop=True), spec.bucket_config, frame_interval=spec.frame_interval,
        seed=int(seed), epoch=settings.epoch, v11_compat=settings.v11_compat,
    )  # fmt: skip
    log.info("%s: %d of %d clips kept in %d buckets", stage, int(table["keep"].sum()), len(table),
             table["bucket_id"].nunique())
    return table


def validate_bucket_table(bucket_table: pd.DataFrame, params: dict[str, Any], stage: str) -> pd.DataFrame:
    """Pass the table through its data contract (raises ContractError with a report) and refuse a
    table with no kept row."""
    settings, _ = parse_params(params, stage)
    contracts.validate_table(bucket_table, BUCKET_SUITE, settings.contracts_dir, name=f"{stage}.bucket_table")
    if not bucket_table["keep"].any():
        reasons = bucket_table["drop_reason"].value_counts().to_dict()
        raise ValueError(f"{stage}: bucketing kept none of {len(bucket_table)} clips (drop reasons: {reasons})")
    return bucket_table


def summarise_buckets(
    bucket_table: pd.DataFrame, params: dict[str, Any], stage: str
) -> tuple[pd.DataFrame, dict[str, Any], plt.Figure]:
    """Samples per bucket (CSV), a JSON summary and a bar chart of the stage's buckets."""
    _, spec = parse_params(params, stage)
    kept = bucket_table[bucket_table["keep"]]
    columns = ["bucket_id", "bucket_resolution", "bucket_num_frames", "bucket_height", "bucket_width", "batch_size"]
    if len(kept):
        summary = kept.groupby(columns, dropna=False).size().rename("samples").reset_index()
    else:
        summary = pd.DataFrame({c: pd.Series(dtype="object") for c in [*columns, "samples"]})
    summary["full_batches"] = summary["samples"] // summary["batch_size"]
    summary["remainder"] = summary["samples"] - summary["full_batches"] * summary["batch_size"]
    summary = summary.sort_values(["bucket_resolution", "bucket_num_frames", "bucket_id"]).reset_index(drop=True)
    report = {
        "stage": stage,
        "frame_interval": spec.frame_interval,
        "rows": len(bucket_table),
        "kept": int(len(kept)),
        "dropped": {str(k): int(v) for k, v in bucket_table["drop_reason"].value_counts().items()},
        "buckets": int(len(summary)),
        "full_batches_per_epoch": int(summary["full_batches"].sum()),
        "samples_per_bucket": {str(r.bucket_id): int(r.samples) for r in summary.itertuples()},
        "bucket_config": {res: {str(t): v for t, v in e.items()} for res, e in spec.bucket_config.to_dict().items()},
        "columns": BUCKET_COLUMNS,
    }
    report["warnings"] = []
    if report["full_batches_per_epoch"] == 0:
        buckets = describe_buckets([(str(r.bucket_id), int(r.samples), int(r.batch_size), int(r.full_batches))
                                    for r in summary.sort_values("samples", ascending=False).itertuples()])
        warning = (f"{stage}: no bucket holds a full batch ({buckets}); every training step of {stage} would run "
                   "a partial batch (and with fewer clips than ranks training refuses to start): lower the batch "
                   f"sizes in bucketing.stages.{stage}.bucket_config or give the stage more clips")
        report["warnings"].append(warning)
        log.warning(warning)
    dropped = ", ".join(f"{k} {v}" for k, v in report["dropped"].items()) or "none"
    note = f"kept {report['kept']} of {report['rows']} clips; dropped: {dropped}"
    return summary, report, bucket_chart(summary, stage, note)


def bucket_chart(summary: pd.DataFrame, stage: str, note: str = "") -> plt.Figure:
    """Horizontal bars: samples per bucket, coloured by resolution."""
    from matplotlib.patches import Patch

    height = max(2.5, 0.3 * len(summary) + 1.4)
    figure, axes = plt.subplots(figsize=(7, height))
    if len(summary):
        resolutions = list(dict.fromkeys(summary["bucket_resolution"]))
        colours = {r: plt.get_cmap("tab10")(i % 10) for i, r in enumerate(resolutions)}
        axes.barh(
            summary["bucket_id"].astype(str), summary["samples"],
            color=[colours[r] for r in summary["bucket_resolution"]],
        )  # fmt: skip
        axes.legend(handles=[Patch(color=c, label=r) for r, c in colours.items()], title="resolution",
                    loc="lower right")
        axes.invert_yaxis()
    else:
        axes.text(0.5, 0.5, "no kept samples", ha="center", va="center", transform=axes.transAxes)
    axes.set_xlabel("samples")
    axes.set_title(f"{stage}: samples per bucket (resolution / frames / H:W)" + (f"\n{note}" if note else ""),
                   fontsize=10)
    figure.tight_layout()
    return figure
