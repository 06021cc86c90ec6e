"""The shortened `make demo`: every pipeline of the default run, chained in one Kedro session, on a tiny
synthetic corpus in a scratch copy of the project (conf/local overrides merge key by key over base)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

TINY = {
    "ingestion": {"synthetic": {
        "num_single_shot": 2, "single_shot_duration_seconds": [2.0, 2.0],
        "num_videos": 3, "num_large": 0, "num_images": 1, "duration_seconds": [3.0, 4.0],
        "shots_per_video": [2, 3],
        "defects": {"static": 1, "text": 0, "dark": 0, "blurred": 0, "zero_bytes": 1, "truncated": 0,
                    "not_video": 0},
    }},
    # batch size 1 in the 144p buckets: a handful of clips still forms batches in every stage
    "bucketing": {"stages": {
        "stage1": {"bucket_config": {"144p": {1: [1.0, 1], 8: [1.0, 1]}}},
        "stage2": {"bucket_config": {"144p": {1: [1.0, 1], 8: [1.0, 1], 16: [1.0, 1]}}},
        "stage3": {"bucket_config": {"144p": {1: [1.0, 1], 16: [1.0, 1]}}},
    }},
    "autoencoder": {"steps": 4, "warmup_steps": 0, "max_clips": 4, "frames_per_clip": 2},
    "training_shared": {"sample_every": 0, "ckpt_every": 2},
    "stage1": {"training": {"max_steps": 3}},
    "stage2": {"training": {"max_steps": 2}},
    "stage3": {"training": {"max_steps": 2}},
    "evaluation": {"max_prompts": 2, "samples_per_prompt": 2, "training_prompts": 1,
                   "generation": {"num_frames": 4, "steps": 2, "batch_size": 2},
                   "real_clips": {"max_clips": 2, "max_frames": 8},
                   "validation": {"max_clips": 2, "timesteps_per_range": 1}},
}


@pytest.mark.slow
def test_demo_runs_every_pipeline_and_tracks_one_parent_run(tmp_path, monkeypatch):
    import mlflow

    from opensora_mlops.pipelines.demo import run_demo

    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    shutil.copytree(ROOT / "conf" / "base", tmp_path / "conf" / "base")
    (tmp_path / "src").mkdir()  # Kedro wants a source dir; the package itself is the installed one
    (tmp_path / "conf" / "local").mkdir()
    (tmp_path / "conf" / "local" / "parameters.yml").write_text(yaml.safe_dump(TINY))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("OPENSORA_MLFLOW", raising=False)

    summary = run_demo(tmp_path)

    data = tmp_path / "data"
    assert str(data / "08_reporting/evaluation/index.html") in summary
    assert "mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db" in summary
    # every layer was written
    quarantine = __import__("pandas").read_parquet(data / "01_raw/raw_quarantine.parquet")
    assert "empty file (0 bytes)" in set(quarantine["reason"])
    for stage in ("stage1", "stage2", "stage3"):
        assert (data / f"05_model_input/{stage}_bucket_table.parquet").is_file()
        trained = json.loads((data / f"08_reporting/{stage}/training_metrics.json").read_text())
        assert trained["steps"] == TINY[stage]["training"]["max_steps"]
    metrics = json.loads((data / "08_reporting/evaluation/metrics.json").read_text())
    assert {"trained", "untrained", "real"} <= set(metrics["adherence"])
    assert metrics["adherence"]["real"]["adherence"] >= 0.9  # real synthetic clips show their captions
    assert (data / "08_reporting/evaluation/index.html").stat().st_size > 1000
    assert (data / "06_models/export/model/model.safetensors").is_file()
    assert (data / "06_models/export/README.md").is_file()
    # one MLflow parent run, the stages and the evaluation/export nested under it, a registered model
    mlflow.set_tracking_uri("sqlite:///mlruns/mlflow.db")
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1
    nested = {r.info.run_name for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id}
    assert {"stage1", "stage2", "stage3", "evaluation", "export"} <= nested
    registration = json.loads((data / "08_reporting/export/registration.json").read_text())
    assert registration["model_uri"].startswith("models:/")
