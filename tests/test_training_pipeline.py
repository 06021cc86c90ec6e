"""The Kedro training template: namespaced stages, a real `stage1` run through a KedroSession with the
MLflow hooks (server down -> warning + local fallback store), and the registry's default chain."""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import pytest
import yaml

from opensora_mlops.training import tiny

ROOT = Path(__file__).resolve().parents[1]


def test_one_template_three_namespaced_stages_chained_by_weights():
    from opensora_mlops.pipelines.training.pipeline import create_stage_pipelines

    stages = create_stage_pipelines()
    assert list(stages) == ["stage1", "stage2", "stage3"]
    for name, pipe in stages.items():
        assert {n.name for n in pipe.nodes} == {f"{name}.cache_latents", f"{name}.train", f"{name}.validate"}
        assert {n.namespace for n in pipe.nodes} == {name}
        assert f"{name}.bucket_table" in pipe.inputs() and f"params:{name}.training" in pipe.inputs()
        assert "params:training_shared" in pipe.inputs() and "vae_model" in pipe.inputs()
        assert f"{name}.model" in pipe.all_outputs()
    assert "stage1.model" in stages["stage2"].inputs() and "stage2.model" in stages["stage3"].inputs()
    assert not any(i.endswith(".model") for i in stages["stage1"].inputs())


def test_registry_registers_stages_and_default_chains_everything():
    from kedro.framework.startup import bootstrap_project

    bootstrap_project(ROOT)
    from opensora_mlops.pipeline_registry import register_pipelines

    pipes = register_pipelines()
    for name in ("stage1", "stage2", "stage3", "autoencoder", "training"):
        assert name in pipes
    default = {n.name for n in pipes["__default__"].nodes}
    for name, pipe in pipes.items():
        if name != "__default__":
            assert {n.name for n in pipe.nodes} <= default, name
    # data order: stage3 trains after stage2, which trains after stage1
    order = [n.name for n in pipes["__default__"].nodes]
    assert order.index("stage1.train") < order.index("stage2.train") < order.index("stage3.train")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_kedro_run_stage1_tracks_to_mlflow_and_falls_back_when_the_server_is_down(tmp_path, monkeypatch):
    import mlflow
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    clips = tiny.write_clips(tmp_path / "clips", count=6)
    table = tiny.bucket_table(clips)
    table.to_parquet(tmp_path / "stage1_bucket_table.parquet")
    (tmp_path / "vae.json").write_text(json.dumps({"type": "tiny"}))
    conf = tmp_path / "conf"
    shutil.copytree(ROOT / "conf" / "base", conf / "base")
    (conf / "local").mkdir()
    out = tmp_path / "data"
    catalog = {
        "stage1.bucket_table": {"type": "pandas.ParquetDataset", "filepath": str(tmp_path / "stage1_bucket_table.parquet")},
        "vae_model": {"type": "json.JSONDataset", "filepath": str(tmp_path / "vae.json")},
        **{f"stage1.{name}": {"type": "json.JSONDataset", "filepath": str(out / f"{name}.json")}
           for name in ("latent_cache", "model", "training_metrics", "validation_metrics", "dvc_metrics")},
        "stage1.training_loss_plot": {"type": "pandas.CSVDataset", "filepath": str(out / "loss.csv")},
    }  # fmt: skip
    (conf / "local" / "catalog.yml").write_text(yaml.safe_dump(catalog))
    params = {
        "training_shared": {"runs_root": str(out / "runs"), "cache_root": str(out / "cache"),
                            "model": dict(tiny.TINY_MODEL), "sample_every": 2,
                            "sample": {"num_frames": 2, "steps": 2, "height": 144, "width": 256}},
        "stage1": {"training": {"max_steps": 3, "ckpt_every": 2}},
    }
    (conf / "local" / "parameters.yml").write_text(yaml.safe_dump(params))
    fallback = f"sqlite:///{tmp_path / 'fallback' / 'mlflow.db'}"
    (conf / "local" / "mlflow.yml").write_text(yaml.safe_dump({
        "tracking_uri": f"http://127.0.0.1:{_closed_port()}", "fallback_uri": fallback,
        "artifact_location": str(tmp_path / "artifacts"), "experiment_name": "training-test"}))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)

    bootstrap_project(ROOT)
    with pytest.warns(RuntimeWarning, match="not reachable"), \
            KedroSession.create(project_path=ROOT, conf_source=str(conf), env="local") as session:
        session.run(pipeline_names=["stage1"])

    model = json.loads((out / "model.json").read_text())
    assert model["steps"] == 3 and Path(model["weights_dir"]).name == "ema"
    assert json.loads((out / "training_metrics.json").read_text())["steps"] == 3
    validation = json.loads((out / "validation_metrics.json").read_text())
    assert validation["val_loss"] > 0 and validation["val_loss_init"] > 0

    mlflow.set_tracking_uri(fallback)
    client = mlflow.MlflowClient()
    runs = mlflow.search_runs(experiment_names=["training-test"], output_format="list")
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    nested = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    assert len(parents) == 1 and len(nested) == 1
    parent, stage = parents[0], nested[0]
    assert stage.info.run_name == "stage1" and stage.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert parent.info.status == stage.info.status == "FINISHED"
    assert parent.data.tags["tracking_fallback"] == "True" and len(parent.data.tags["git_commit"]) == 40
    assert parent.data.params["training_shared.model.name"] == "STDiT2-tiny"
    assert stage.data.params["max_steps"] == "3" and stage.data.params["model.hidden_size"] == "48"
    assert stage.data.tags["data_version"] == json.loads((out / "latent_cache.json").read_text())["table_hash"]
    assert [m.step for m in client.get_metric_history(stage.info.run_id, "loss")] == [1, 2, 3]
    for key in ("grad_norm", "lr", "samples_per_s", "tokens_per_s", "val_loss"):
        assert key in stage.data.metrics
    artifacts = {a.path for a in client.list_artifacts(stage.info.run_id)}
    assert {"config", "samples", "weights"} <= artifacts
    assert [a.path for a in client.list_artifacts(stage.info.run_id, "samples")] == ["samples/step_00000002.gif"]
    weights = {a.path for a in client.list_artifacts(stage.info.run_id, "weights/ema")}
    assert "weights/ema/model.safetensors" in weights


def test_cluster_environment_selects_the_production_settings():
    import torch
    from kedro.config import OmegaConfigLoader

    from opensora_mlops.config import ConfigError, strict_dataclass
    from opensora_mlops.pipelines.training.nodes import _train_config, stage_settings
    from opensora_mlops.settings import CONFIG_LOADER_ARGS
    from opensora_mlops.training.trainer import TrainConfig

    args = {**CONFIG_LOADER_ARGS, "default_run_env": "cluster"}
    params = OmegaConfigLoader(str(ROOT / "conf"), **args)["parameters"]
    for stage, checkpointing in (("stage1", False), ("stage2", True), ("stage3", True)):
        settings = stage_settings(params[stage]["training"], params["training_shared"])
        cfg = strict_dataclass(TrainConfig, _train_config(settings, {}, None), stage)
        assert cfg.model == {"name": "STDiT2-XL/2"} and (cfg.plugin, cfg.dtype) == ("zero2", "bf16")
        assert cfg.lr == 2e-5 and cfg.grad_checkpoint is checkpointing and cfg.optimizer == "hybrid_adam"
        assert settings["text_encoder"]["type"] == "t5" and settings["text_encoder"]["max_length"] == 200
        assert cfg.mask_ratios["mask_no"] == 0.75  # kept from conf/base: keys merge one by one
        assert not settings.get("image_views")  # the embedded default's image views stay out of 1.1's recipe
        # 1.1's objective: plain ε loss, not the embedded default's subject weighting (merged from base)
        assert cfg.scheduler == {"type": "iddpm", "prediction": "epsilon", "num_timesteps": 1000,
                                 "cfg_scale": 7.0, "foreground_weight": 0.0}
        if not torch.cuda.is_available():
            with pytest.raises(ConfigError, match="zero2.*needs CUDA"):
                cfg.validate()
    assert params["autoencoder"]["pretrained"].endswith("sd-vae-ft-ema")
    # evaluation samples with the guidance saved with the weights: 1.1's 7.0 here
    assert params["evaluation"]["generation"]["cfg_scale"] is None
    # and the embedded default stays on CPU
    base = OmegaConfigLoader(str(ROOT / "conf"), **{**CONFIG_LOADER_ARGS, "default_run_env": "local"})["parameters"]
    settings = stage_settings(base["stage1"]["training"], base["training_shared"])
    strict_dataclass(TrainConfig, _train_config(settings, {}, None), "stage1").validate()
