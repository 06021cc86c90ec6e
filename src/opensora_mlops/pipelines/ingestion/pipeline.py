"""Ingestion pipeline wiring (nodes in :mod:`.nodes`)."""

from __future__ import annotations

from kedro.pipeline import Pipeline, node

from opensora_mlops.pipelines.ingestion import nodes


def create_pipeline(**kwargs) -> Pipeline:
    params = "params:ingestion"
    return Pipeline(
        [
            node(nodes.collect_candidates, [params, "params:curation"],
                 ["ingestion_candidates", "ingestion_listing_quarantine", "synthetic_ground_truth",
                  "ingestion_listing_counts"],
                 name="collect_candidates"),
            node(nodes.probe_candidates, ["ingestion_candidates", params],
                 ["ingestion_probed", "ingestion_probe_quarantine"], name="probe_candidates"),
            node(nodes.validate_raw_metadata, ["ingestion_probed", params], "raw_metadata",
                 name="validate_raw_metadata"),
            node(nodes.collect_quarantine, ["ingestion_listing_quarantine", "ingestion_probe_quarantine"],
                 "raw_quarantine", name="collect_raw_quarantine"),
            node(nodes.summarize_ingestion,
                 ["ingestion_candidates", "raw_metadata", "raw_quarantine", "ingestion_listing_counts", params],
                 "ingestion_summary", name="summarize_ingestion"),
        ],
        tags=["ingestion"],
    )
