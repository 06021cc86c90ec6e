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

from opensora_mlops.config import ConfigError
from opensora_mlops.curation.synthetic import ShotSpec, caption_for, render_shot
from opensora_mlops.data.video_io import write_video
from opensora_mlops.evaluation import evaluate
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


#: What "stage 1" trained on (curation's wording): not the first bundled prompt's combination (a red
#: circle on gray, still: held-out) but one the suite lacks (added to the evaluated prompts: seen).
TRAINING_TEXTS = [
    "A red circle moving left quickly on a gray background.",
    "A green triangle moving up quickly on a navy background.",
    "a person walking a dog",  # outside the vocabulary: not a combination
]


def _cache_table(texts):
    return pd.DataFrame(
        {
            "text": texts,
            "bucket_id": ["b0"] * len(texts),
            "bucket_num_frames": [4] * len(texts),
            "bucket_height": [32] * len(texts),
            "bucket_width": [32] * len(texts),
            "fps": [8.0] * len(texts),
        }
    )


@pytest.fixture(scope="module")
def latent_cache(tmp_path_factory, stage_model):
    root = tmp_path_factory.mktemp("cache")
    vae = VideoAutoencoder.from_pretrained(stage_model["vae"]["from_pretrained"])
    encoder = build_text_encoder(TEXT_ENCODER)
    generator = torch.Generator().manual_seed(0)

    def load_video(key: SampleKey) -> torch.Tensor:
        return torch.rand((3, key.num_frames, key.height, key.width), generator=generator) * 2 - 1

    held_out = ["a red circle moving left quickly on a gray background", "a blue square on a black background"]
    directories = {
        split: write_latent_cache(root / split, _cache_table(texts), load_video, vae.encode, encoder.encode,
                                  meta={"stage": "stage3"})
        for split, texts in (("val", held_out), ("train", TRAINING_TEXTS))
    }
    return {"stage": "stage3", "val_dir": str(directories["val"]), "train_dir": str(directories["train"])}


@pytest.fixture(scope="module")
def online_stage(tmp_path_factory):
    """An online-encoded stage: its manifest points at the bucket table it trained on."""
    path = tmp_path_factory.mktemp("online") / "online_table.parquet"
    _cache_table(["a white square moving down slowly on a maroon background"]).to_parquet(path)
    return {"source": "online", "stage": "stage2", "bucket_table": str(path)}


def _params(tmp_path):
    return {
        "max_prompts": 1,
        "samples_per_prompt": 2,
        "training_prompts": 1,
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
        "statistics": {"confidence": 0.95, "resamples": 200, "seed": 0},
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
        "stage1.latent_cache",
        "stage2.latent_cache",
        "stage3.latent_cache",
        "params:evaluation",
        "params:export",  # the registered model whose champion the report's verdict compares with
    }
    assert "evaluation_metrics" in pipeline.all_outputs()


def test_training_combinations_come_from_every_stage(latent_cache, online_stage):
    training = nodes.training_combinations(latent_cache, online_stage, None)
    assert training["combinations"] == [
        ["green", "triangle", "navy", "up"],
        ["red", "circle", "gray", "left"],
        ["white", "square", "maroon", "down"],
    ]
    # the held-out clips of the cache (val_dir) are not training clips
    assert "a blue square on a black background" not in training["captions"]
    with pytest.raises(ConfigError, match="neither train_dir nor bucket_table"):
        nodes.training_combinations({"stage": "stage1", "val_dir": "x"})


def test_evaluation_nodes_end_to_end(tmp_path, mlflow_sqlite_store, stage_model, real_clips, latent_cache):
    params = {**_params(tmp_path), "untrained_samples_per_prompt": 1}  # the untrained floor: one seed is enough
    training = nodes.training_combinations(latent_cache, None, None)
    samples = nodes.generate_samples(stage_model, training, params)
    # one suite prompt and one training prompt (the other training combination is the real clip's), two
    # seeds each, two groups
    assert samples["prompts"][1] in TRAINING_TEXTS[:2]
    assert samples["splits"] == {samples["prompts"][0]: "held_out", samples["prompts"][1]: "seen"}
    assert samples["seeds"] == {"trained": [0, 1], "untrained": [0]}
    records = samples["records"]
    assert [r["group"] for r in records] == ["trained"] * 4 + ["untrained"] * 2
    assert sorted((r["prompt"], r["seed"]) for r in records[4:]) == sorted((p, 0) for p in samples["prompts"])
    assert sorted((r["prompt"], r["seed"]) for r in records[:4]) == sorted(
        (p, s) for p in samples["prompts"] for s in (0, 1)
    )
    for record in records:
        assert record["video"].endswith(".mp4") and record["gif"].endswith(".gif")
        sidecar = json.loads(Path(record["settings"]).read_text())
        assert sidecar["evaluation_group"] == record["group"] and sidecar["prompt"] == record["prompt"]
        assert sidecar["evaluation_seed"] == record["seed"]
    # the seeds give different videos of one prompt
    first = [r for r in records if r["group"] == "trained" and r["prompt"] == samples["prompts"][0]]
    assert len({Path(r["video"]).read_bytes() for r in first}) == 2
    assert set(samples["timing"]["generate_s"]) == {"trained", "untrained"}
    json.dumps(samples)  # the catalog stores it as JSON

    scores, adherence = nodes.score_samples(samples, real_clips, params)
    assert set(scores["vbench"]) == {"trained", "untrained", "real"}
    assert set(adherence["group"]) == {"trained", "untrained", "real"}
    assert set(adherence["split"]) == {"seen", "held_out"}
    # real synthetic clips are the upper bound: they show exactly their captions, every check
    real = scores["adherence"]["real"]
    assert real["adherence"] == real["overall"] == real["background"] == 1.0
    assert real["n"] == 3.0 and real["prompts"] == 3.0
    assert scores["adherence"]["trained"]["n"] == 4.0 and scores["adherence"]["trained"]["prompts"] == 2.0
    for stats in scores["adherence"].values():
        for metric in ("colour", "shape", "direction", "background", "adherence", "overall"):
            assert stats[f"{metric}_low"] <= stats[metric] <= stats[f"{metric}_high"]
    assert scores["adherence_seen"]["trained"]["n"] == scores["adherence_held_out"]["trained"]["n"] == 2.0
    # the real clip "a red circle moving left quickly on a gray background" was trained on
    assert scores["adherence_seen"]["real"]["n"] == 1.0 and scores["adherence_held_out"]["real"]["n"] == 2.0
    assert scores["chance"]["colour"] == pytest.approx(1 / 7)
    assert samples["prompts"][1] in scores["splits"]["seen"]
    assert samples["prompts"][0] in scores["splits"]["held_out"]
    for group_scores in scores["vbench"].values():
        assert all(0.0 <= v <= 1.0 for v in group_scores.values())
    for group, group_scores in scores["vbench"].items():
        for dim, value in group_scores.items():
            ci = scores["vbench_ci"][group]
            assert ci[f"{dim}_low"] <= value <= ci[f"{dim}_high"]
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
    assert set(metrics) == {"vbench", "vbench_ci", "chance", "adherence", "adherence_seen",
                            "adherence_held_out", "val_loss", "val_x0_mse"}
    assert set(metrics["val_loss"]["trained"]) == {"t000_500", "t500_1000", "mean"}
    assert set(metrics["val_x0_mse"]["trained"]) == {"t000_500", "t500_1000", "mean"}
    flat = evaluate.flatten_metrics(metrics)
    assert flat["adherence.real.overall"] == 1.0 and "adherence_seen.trained.colour_high" in flat

    def leaves(tree):
        for value in tree.values():
            yield from leaves(value) if isinstance(value, dict) else [value]

    assert all(type(v) is float for v in leaves(metrics))  # DVC metrics: numbers only
    html = Path(report["html"]).read_text(encoding="utf-8")
    # the report opens with the verdict; without tracking there is no run and no champion
    assert html[html.index("<body>") + len("<body>"):].lstrip().startswith("<header id='verdict'")
    verdict_section = html[: html.index("</header>")]
    assert "Trained vs untrained model: <strong>" in verdict_section
    assert "paired bootstrap over prompts, 2 prompts" in verdict_section
    assert "Trained vs champion: no champion yet." in verdict_section
    assert "No MLflow run (tracking disabled)" in verdict_section
    assert report["verdict"]["champion"] == "no champion yet"
    assert report["verdict"]["untrained"] in ("better", "not better")
    for text in (
        "VBench-style dimensions",
        "Methods",
        "Prompt adherence",
        "chance",
        "Seen combinations",
        "Held-out combinations",
        "overall (all 4 right)",
        "Validation loss by timestep",
        "x̂0 MSE",
        "Samples",
        "Evaluation cost",
    ):
        assert text in html
    assert scores["not_implemented"] == []  # the first bundled prompt and training prompts name implemented ones
    for key in ("vbench_plot", "adherence_plot", "val_loss_plot"):
        assert Path(report[key]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(report["gifs"]) == 4  # the first seed of each prompt and group
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

    # with tracking and a registered champion, the verdict compares with it and links the run
    from opensora_mlops.pipelines.export.registry import annotate_and_alias

    client = mlflow.MlflowClient()
    client.create_registered_model("eval-champion")
    source = tmp_path / "champion_model"
    source.mkdir()
    champion_version = client.create_model_version("eval-champion", source.as_uri(), run_id=parent.info.run_id)
    annotate_and_alias(client, "eval-champion", str(champion_version.version), "card",
                       {**flat, "adherence.trained.adherence": 1.0, "adherence.trained.adherence_low": 1.0,
                        "adherence.trained.adherence_high": 1.0}, {})
    with mlflow.start_run(experiment_id=experiment, run_name="kedro run evaluation") as tracked:
        mlflow.set_tag("git_commit", "feedc0de")
        _, report = nodes.build_report(samples, scores, adherence, val_loss, params,
                                       {"registered_model_name": "eval-champion"})
    verdict_section = Path(report["html"]).read_text(encoding="utf-8").split("</header>")[0]
    assert "Trained vs champion eval-champion v1: <strong>" in verdict_section
    assert "trained − champion (95% CI)" in verdict_section
    assert f"/#/experiments/{experiment}/runs/{tracked.info.run_id}'>{tracked.info.run_id}</a>" in verdict_section
    assert "feedc0de" in verdict_section
    assert report["verdict"]["champion"] == "not better"  # a champion at 1.0 cannot be beaten
    assert "NOT BETTER" in verdict_section
    mlflow.set_tracking_uri("")


def test_bad_parameters_are_named(tmp_path):
    params = _params(tmp_path) | {"max_prompt": 3}
    with pytest.raises(Exception, match="max_prompt"):
        nodes.generate_samples({}, {}, params)
    params = _params(tmp_path)
    params["generation"] = {**params["generation"], "frames": 4}
    with pytest.raises(Exception, match="frames"):
        nodes.score_samples({"records": []}, pd.DataFrame(), params)
    for key, value, message in (
        ("adherence", {"min_subject_share": 0.5}, "min_subject_share"),
        ("statistics", {"confidence": 1.0}, "confidence"),
        ("generation", {"seeds": [1, 1]}, "distinct integers"),
        ("training_prompts", -1, "training_prompts"),
    ):
        with pytest.raises(ConfigError, match=message):
            evaluate.EvaluationConfig.from_dict(_params(tmp_path) | {key: value})


def test_seeds_list_overrides_samples_per_prompt(tmp_path):
    config = evaluate.EvaluationConfig.from_dict(_params(tmp_path))
    assert config.seeds() == [0, 1]
    params = _params(tmp_path)
    params["generation"] = {**params["generation"], "seeds": [7, 3, 11]}
    assert evaluate.EvaluationConfig.from_dict(params).seeds() == [7, 3, 11]
    # the batch seeds never collide across (seed, batch) pairs
    assert len({evaluate.batch_seed(s, b) for s in range(50) for b in range(50)}) == 2500


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


def test_demo_summary_prints_intervals_chance_and_the_split(tmp_path):
    from opensora_mlops.pipelines.demo import summarise

    metrics = {
        "chance": {"colour": 1 / 7, "shape": 1 / 3, "direction": 0.2, "background": 0.25, "adherence": 0.23,
                   "overall": 1 / 420},
        "adherence": {
            "trained": {"colour": 0.5, "colour_low": 0.25, "colour_high": 0.75, "n": 12.0, "prompts": 4.0},
            "real": {"colour": 1.0, "colour_low": 1.0, "colour_high": 1.0, "n": 3.0, "prompts": 3.0},
        },
        "adherence_seen": {"trained": {"colour": 0.75, "colour_low": 0.5, "colour_high": 1.0, "n": 6.0,
                                       "prompts": 2.0}},
        "adherence_held_out": {},
    }
    path = tmp_path / "data" / "08_reporting" / "evaluation" / "metrics.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(metrics))
    text = summarise(tmp_path, 60.0, 1.0)
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.strip().startswith("chance") and "real" in line)
    assert lines[header].split() == ["chance", "real", "trained"]  # real first: the upper bound
    colour = next(line for line in lines[header:] if line.strip().startswith("colour"))
    assert colour.split() == ["colour", "0.143", "1.00", "[1.00,", "1.00]", "0.50", "[0.25,", "0.75]"]
    assert any("seen combinations" in line for line in lines)
    assert not any("held-out combinations" in line for line in lines)  # none were scored
    assert any("3 prompts, 3 clips" in line for line in lines)


def test_bf16_sampling_runs_and_stays_close_to_fp32(tmp_path, stage_model, monkeypatch):
    """generation.dtype: bf16 samples with a bf16 copy of the denoiser; same seed, same prompts: the
    frames stay close to the fp32 ones. Measured here (2 videos x 4 frames of 32x32, 2 steps): max |diff|
    4 grey levels of 255, mean 0.15, 99th percentile 2; the bounds leave room for other CPUs' kernels."""
    from opensora_mlops.inference import generate as generate_module

    videos: dict[str, list[np.ndarray]] = {}
    save = generate_module.save_generation

    def keep_frames(result, out_dir, name):  # the frames before video encoding (lossy) are compared
        videos.setdefault(result.settings[0]["dtype"], []).extend(result.videos)
        return save(result, out_dir, name=name)

    monkeypatch.setattr(generate_module, "save_generation", keep_frames)
    model, vae, encoder = evaluate.load_stage_components(stage_model)
    entries = evaluate.suite_entries(evaluate.EvaluationConfig.from_dict(_params(tmp_path)))
    records = {}
    for dtype in ("fp32", "bf16"):
        params = _params(tmp_path / dtype)
        params["generation"] = {**params["generation"], "dtype": dtype}
        config = evaluate.EvaluationConfig.from_dict(params)
        records[dtype] = evaluate.generate_group("trained", model, vae, encoder, entries, config)
    assert next(model.parameters()).dtype == torch.float32  # the caller's model is not cast
    sidecar = json.loads(Path(records["bf16"][0]["settings"]).read_text())
    assert sidecar["dtype"] == "bf16"
    fp32, bf16 = (np.stack(videos[d]).astype(np.float32) for d in ("fp32", "bf16"))
    assert fp32.shape == bf16.shape == (2, 4, 32, 32, 3)
    diff = np.abs(fp32 - bf16)
    assert diff.max() > 0  # really sampled in another precision
    assert diff.mean() < 1.0 and diff.max() <= 16


def test_sampling_dtype_other_than_fp32_or_bf16_is_a_config_error(tmp_path):
    for dtype in ("fp16", "float64", None, 16):
        params = _params(tmp_path)
        params["generation"] = {**params["generation"], "dtype": dtype}
        with pytest.raises(ConfigError, match="generation.dtype"):
            evaluate.EvaluationConfig.from_dict(params)
    assert evaluate.EvaluationConfig.from_dict(_params(tmp_path)).generation_settings()["dtype"] == "fp32"


def test_null_guidance_samples_with_the_guidance_saved_with_the_weights(tmp_path):
    """One place for guidance: the scheduler config training saves beside the weights (what export and
    `generate` read too); a number in evaluation.generation still overrides it."""
    params = _params(tmp_path)
    params["generation"] = {**params["generation"], "cfg_scale": None, "fps": None}
    config = evaluate.EvaluationConfig.from_dict(params)
    conditions = {"fps": 25.0}
    v_at_4_5 = {"type": "iddpm", "prediction": "v", "cfg_scale": 4.5}
    gen = evaluate.generation_for_model(config, conditions, v_at_4_5)
    assert gen["cfg_scale"] == 4.5 and gen["fps"] == 25.0
    assert evaluate.generation_for_model(config, conditions, {"type": "rflow", "cfg_scale": 2.0})["cfg_scale"] == 2.0
    # weights without a scheduler.json are Open-Sora 1.1's: its ε chain and guidance 7
    assert evaluate.generation_for_model(config, conditions, None)["cfg_scale"] == 7.0
    assert evaluate.generation_for_model(evaluate.EvaluationConfig.from_dict(_params(tmp_path)), conditions,
                                         v_at_4_5)["cfg_scale"] == 4.0


def test_auto_sampling_dtype_is_bf16_only_where_the_cpu_computes_it(tmp_path, monkeypatch):
    from opensora_mlops.models import vae

    params = _params(tmp_path)
    params["generation"] = {**params["generation"], "dtype": "auto"}
    config = evaluate.EvaluationConfig.from_dict(params)
    for native, expected in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(vae, "bf16_is_fast", lambda native=native: native)
        assert evaluate.generation_for_model(config, None)["dtype"] == expected
        model = torch.nn.Linear(2, 2)
        assert next(evaluate.sampling_model(model, "auto").parameters()).dtype == (
            torch.bfloat16 if native else torch.float32)
    assert evaluate.resolve_sampling_dtype("auto", "cuda") == "bf16"
    assert evaluate.resolve_sampling_dtype("fp32", "cuda") == "fp32"
