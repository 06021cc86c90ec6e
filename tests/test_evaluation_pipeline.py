"""The evaluation pipeline end to end on tiny real components: an STDiT2-tiny "stage 3" checkpoint, the
tiny VAE, MiniLM captions, a latent cache written by the training code, real synthetic clips; then the
report, the DVC metrics file and the MLflow nested run."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from kedro.pipeline import Pipeline

from opensora_mlops.curation.synthetic import ShotSpec, caption_for, render_shot
from opensora_mlops.data.video_io import write_video
from opensora_mlops.models.stdit2 import build_model
from opensora_mlops.models.text_encoder import build_text_encoder
from opensora_mlops.models.vae import VideoAutoencoder
from opensora_mlops.pipelines.evaluation import nodes
from opensora_mlops.pipelines.evaluation.pipeline import create_pipeline
from opensora_mlops.training.latents import SampleKey, write_latent_cache

TEXT_ENCODER = {"type": "minilm", "max_length": 32}


@pytest.fixture(scope="module")
def stage_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("stage3")
    torch.manual_seed(0)
    model = build_model("STDiT2-tiny")
    # a "trained" model differs from a fresh init: perturb every weight
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    model.save_pretrained(root / "weights")
    VideoAutoencoder.tiny(seed=0).save_pretrained(root / "vae")
    return {
        "stage": "stage3",
        "weights_dir": str(root / "weights"),
        "text_encoder": TEXT_ENCODER,
        "vae": {"type": "pretrained", "from_pretrained": str(root / "vae")},
    }


@pytest.fixture(scope="module")
def real_clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    specs = [
        ShotSpec("red", "circle", "gray", "left", "quickly"),
        ShotSpec("blue", "square", "black", "up", "quickly"),
        ShotSpec("yellow", "triangle", "navy"),
    ]
    rows = []
    for i, spec in enumerate(specs):
        frames = render_shot(spec, 96, 128, 12, 30.0, (70.0, 55.0))
        rows.append({"path": str(write_video(root / f"clip_{i}.mp4", frames, 8)), "text": caption_for(spec)})
    rows.append({"path": str(root / "missing.mp4"), "text": caption_for(specs[0])})  # skipped: no file
    rows.append({"path": rows[0]["path"], "text": "a person walking a dog"})  # skipped: not the vocabulary
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def latent_cache(tmp_path_factory, stage_model):
    root = tmp_path_factory.mktemp("cache")
    vae = VideoAutoencoder.from_pretrained(stage_model["vae"]["from_pretrained"])
    encoder = build_text_encoder(TEXT_ENCODER)
    table = pd.DataFrame(
        {
            "text": [
                "a red circle moving left quickly on a gray background",
                "a blue square on a black background",
            ],
            "bucket_id": ["b0", "b0"],
            "bucket_num_frames": [4, 4],
            "bucket_height": [32, 32],
            "bucket_width": [32, 32],
            "fps": [8.0, 8.0],
        }
    )
    generator = torch.Generator().manual_seed(0)

    def load_video(key: SampleKey) -> torch.Tensor:
        return torch.rand((3, key.num_frames, key.height, key.width), generator=generator) * 2 - 1

    directory = write_latent_cache(
        root / "val", table, load_video, vae.encode, encoder.encode, meta={"stage": "stage3"}
    )
    return {"stage": "stage3", "val_dir": str(directory)}


def _params(tmp_path):
    return {
        "max_prompts": 2,
        "samples_per_prompt": 1,
        "groups": ["trained", "untrained"],
        "generation": {
            "num_frames": 4,
            "height": 32,
            "width": 32,
            "fps": 8.0,
            "steps": 2,
            "cfg_scale": 4.0,
            "seed": 0,
            "batch_size": 2,
        },
        "real_clips": {"max_clips": 8, "max_frames": 12},
        "validation": {"num_ranges": 2, "timesteps_per_range": 1, "max_clips": 2, "seed": 0},
        "output_dir": str(tmp_path / "07_model_output" / "evaluation"),
        "report_dir": str(tmp_path / "08_reporting" / "evaluation"),
        "threads": 2,
        "progress": False,
    }


def test_pipeline_wiring():
    pipeline = create_pipeline()
    assert isinstance(pipeline, Pipeline)
    assert pipeline.inputs() == {
        "stage3.model",
        "stage3.filtered_clips",
        "stage3.latent_cache",
        "params:evaluation",
    }
    assert "evaluation_metrics" in pipeline.all_outputs()


def test_evaluation_nodes_end_to_end(tmp_path, mlflow_sqlite_store, stage_model, real_clips, latent_cache):
    params = _params(tmp_path)
    samples = nodes.generate_samples(stage_model, params)
    groups = [r["group"] for r in samples["records"]]
    assert groups == ["trained", "trained", "untrained", "untrained"]
    for record in samples["records"]:
        assert record["video"].endswith(".mp4") and record["gif"].endswith(".gif")
        sidecar = json.loads(Path(record["settings"]).read_text())
        assert sidecar["evaluation_group"] == record["group"] and sidecar["prompt"] == record["prompt"]
    json.dumps(samples)  # the catalog stores it as JSON

    scores, adherence = nodes.score_samples(samples, real_clips, params)
    assert set(scores["vbench"]) == {"trained", "untrained", "real"}
    assert set(adherence["group"]) == {"trained", "untrained", "real"}
    # real synthetic clips are the upper bound: they show exactly their captions
    assert scores["adherence"]["real"]["adherence"] == 1.0
    assert scores["adherence"]["real"]["n"] == 3.0
    assert scores["adherence"]["trained"]["n"] == 2.0
    for group_scores in scores["vbench"].values():
        assert all(0.0 <= v <= 1.0 for v in group_scores.values())
    assert set(scores["methods"]) >= set(scores["vbench"]["real"])
    json.dumps(scores)

    val_loss = nodes.validation_loss(stage_model, latent_cache, params)
    assert set(val_loss["group"]) == {"trained", "untrained"}
    assert sorted(val_loss["range_start"].unique()) == [0, 500]
    assert len(val_loss) == 2 * 2 * 2  # groups x clips x timesteps
    assert np.isfinite(val_loss["loss"]).all()
    # the same clips and noise, different weights: the losses differ
    trained = val_loss[val_loss.group == "trained"]["loss"].to_numpy()
    untrained = val_loss[val_loss.group == "untrained"]["loss"].to_numpy()
    assert not np.allclose(trained, untrained)

    metrics, report = nodes.build_report(samples, scores, adherence, val_loss, params)
    assert set(metrics) == {"vbench", "adherence", "val_loss"}
    assert set(metrics["val_loss"]["trained"]) == {"t000_500", "t500_1000", "mean"}
    html = Path(report["html"]).read_text(encoding="utf-8")
    for text in (
        "VBench-style dimensions",
        "Methods",
        "Prompt adherence",
        "Validation loss by timestep",
        "Samples",
    ):
        assert text in html
    assert scores["not_implemented"] == []  # the first two bundled prompts only name implemented dimensions
    for key in ("vbench_plot", "adherence_plot", "val_loss_plot"):
        assert Path(report[key]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(report["gifs"]) == 4
    json.dumps(metrics)

    # MLflow: a nested "evaluation" run under the active parent run
    mlflow.set_tracking_uri(mlflow_sqlite_store(tmp_path / "mlflow.db"))
    experiment = mlflow.create_experiment("eval-test", artifact_location=(tmp_path / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=experiment, run_name="kedro run evaluation") as parent:
        nodes.log_to_mlflow(metrics, report)
    children = mlflow.search_runs(
        [experiment], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert len(children) == 1
    assert mlflow.get_run(children["run_id"].iloc[0]).info.run_name == "evaluation"
    assert children["metrics.adherence.real.adherence"].iloc[0] == 1.0
    assert "metrics.val_loss.trained.mean" in children.columns
    artifacts = mlflow.MlflowClient().list_artifacts(children["run_id"].iloc[0], "evaluation_report")
    assert "evaluation_report/index.html" in {a.path for a in artifacts}
    # without an active run (tracking disabled) the node logs nothing and does not fail
    nodes.log_to_mlflow(metrics, report)
    mlflow.set_tracking_uri("")


def test_bad_parameters_are_named(tmp_path):
    params = _params(tmp_path) | {"max_prompt": 3}
    with pytest.raises(Exception, match="max_prompt"):
        nodes.generate_samples({}, params)
    params = _params(tmp_path)
    params["generation"] = {**params["generation"], "frames": 4}
    with pytest.raises(Exception, match="frames"):
        nodes.score_samples({"records": []}, pd.DataFrame(), params)


def test_report_lists_dimensions_it_does_not_implement(tmp_path):
    from opensora_mlops.evaluation.report import ReportContent, write_report

    content = ReportContent(
        title="t",
        vbench={"trained": {"color": 0.5}},
        methods={"color": "classical"},
        not_implemented=["human_action", "scene"],
        not_applicable={"color": ["a cat"]},
    )
    written = write_report(content, tmp_path)
    html = Path(written["html"]).read_text(encoding="utf-8")
    assert "not implemented here (not scored): human_action, scene" in html
    assert "color: not scored for 1 prompt(s) outside the synthetic vocabulary" in html
    assert "adherence_plot" not in written and "val_loss_plot" not in written
