"""Ingestion nodes: thin wrappers over :mod:`opensora_mlops.curation` and :mod:`opensora_mlops.data.contracts`."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from opensora_mlops.config import ConfigError, strict_dataclass
from opensora_mlops.curation.probe import ProbeConfig, probe_table, quarantine_frame, summarize
from opensora_mlops.curation.sources import (
    FolderSourceConfig,
    check_caption_strategy,
    list_folder,
    synthetic_candidates,
)
from opensora_mlops.curation.synthetic import GROUND_TRUTH_COLUMNS, SyntheticConfig, ground_truth_table
from opensora_mlops.data.contracts import validate_table

log = logging.getLogger(__name__)

RAW_SUITE = "raw_metadata"


@dataclass(frozen=True)
class IngestionParams:
    """``parameters_ingestion.yml`` → ``ingestion`` (every key checked)."""

    source: str = "synthetic"
    synthetic_dir: str = "data/01_raw/synthetic"
    synthetic: dict[str, Any] = field(default_factory=dict)
    regenerate_synthetic: bool = False
    folder: dict[str, Any] = field(default_factory=dict)
    probe: dict[str, Any] = field(default_factory=dict)
    contracts_dir: str | None = "data/08_reporting/contracts"
    progress: bool = True

    def __post_init__(self) -> None:
        if self.source not in {"synthetic", "folder"}:
            raise ConfigError(f"ingestion.source must be 'synthetic' or 'folder', got {self.source!r}")
        # fail on a bad sub-config before any work starts, whichever source is active
        SyntheticConfig.from_dict(self.synthetic)
        ProbeConfig.from_dict(self.probe)
        if self.source == "folder":
            FolderSourceConfig.from_dict(self.folder)


def _params(params: dict[str, Any]) -> IngestionParams:
    return strict_dataclass(IngestionParams, dict(params or {}), "ingestion")


def collect_candidates(params: dict[str, Any], curation: dict[str, Any] | None = None
                       ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict[str, int]]:
    """Generate the synthetic corpus or list the user folder.

    Returns ``(candidates, listing quarantine, synthetic ground truth (empty for a folder), counts)``.
    Given the curation parameters (the pipeline always passes them), a folder where no file has a
    caption stops here, before probing, unless ``curation.captions`` names the VLM or a fallback
    (``check_caption_strategy``).
    """
    cfg = _params(params)
    if cfg.source == "synthetic":
        candidates, videos = synthetic_candidates(cfg.synthetic_dir, cfg.synthetic, progress=cfg.progress,
                                                  reuse=not cfg.regenerate_synthetic)
        truth = ground_truth_table(videos, cfg.synthetic_dir)
        log.info("synthetic corpus: %d files in %s (kinds: %s)", len(videos), cfg.synthetic_dir,
                 truth.drop_duplicates("path")["kind"].value_counts().to_dict())
        return candidates, quarantine_frame([]), truth, {}
    candidates, quarantine, counts = list_folder(cfg.folder)
    # the curation settings say whether a VLM or a fallback will caption what the folder does not
    uncaptioned = 0 if curation is None else check_caption_strategy(candidates, curation.get("captions"),
                                                                      str(cfg.folder.get("root")))
    if uncaptioned:
        log.warning("folder %s: %d of %d files have no caption (curation.captions.missing_text decides: drop, "
                    "filename or empty)", cfg.folder.get("root"), uncaptioned, len(candidates))
    log.info("folder %s: %d candidate files, %d listing problems, %s", cfg.folder.get("root"), len(candidates),
             len(quarantine), counts)
    return candidates, quarantine, pd.DataFrame(columns=GROUND_TRUTH_COLUMNS), counts


def probe_candidates(candidates: pd.DataFrame, params: dict[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Probe every candidate with PyAV; unusable files go to the probe quarantine with a reason."""
    cfg = _params(params)
    metadata, quarantine = probe_table(candidates, cfg.probe, progress=cfg.progress)
    log.info("probe: %d readable, %d quarantined", len(metadata), len(quarantine))
    return metadata, quarantine


def validate_raw_metadata(probed: pd.DataFrame, params: dict[str, Any]) -> pd.DataFrame:
    """The ``raw_metadata`` data contract: raises ``ContractError`` (with a report) if the table breaks it."""
    cfg = _params(params)
    result = validate_table(probed, RAW_SUITE, cfg.contracts_dir)
    log.info("data contract %r passed: %d rows, %d expectations (report: %s)", RAW_SUITE, result.n_rows,
             result.evaluated, result.report_markdown)
    return probed


def collect_quarantine(listing_quarantine: pd.DataFrame, probe_quarantine: pd.DataFrame) -> pd.DataFrame:
    """Everything rejected during ingestion, with reason and stage."""
    return quarantine_frame(pd.concat([listing_quarantine, probe_quarantine], ignore_index=True).to_dict("records"))


def summarize_ingestion(candidates: pd.DataFrame, raw_metadata: pd.DataFrame, raw_quarantine: pd.DataFrame,
                        listing_counts: dict[str, int], params: dict[str, Any]) -> dict[str, Any]:
    """Counts for the run report (also logged): nothing is dropped without being counted here."""
    cfg = _params(params)
    summary = summarize(raw_metadata, raw_quarantine)
    # probed = accepted + quarantined at the probe; listing problems (bad caption rows, files outside the
    # root, unsupported files) never reached the probe and are counted under quarantined_by_stage
    summary["candidates"] = len(candidates)
    summary["total_video_seconds"] = round(summary["total_video_seconds"], 3)
    summary["source"] = cfg.source
    summary["root"] = str(Path(cfg.synthetic_dir if cfg.source == "synthetic" else cfg.folder.get("root", "")))
    summary.update({k: int(v) for k, v in listing_counts.items()})
    summary["contract"] = {"suite": RAW_SUITE, "report_dir": cfg.contracts_dir, "passed": True}
    log.info("ingestion summary: %s", summary)
    return summary
