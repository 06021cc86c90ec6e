"""Export: the self-contained model directory, the Open-Sora 1.1 checkpoint, and the MLflow pyfunc that
turns prompts into videos after a round trip through the model registry."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from opensora_mlops.config import ConfigError
from opensora_mlops.data.video_io import read_video
from opensora_mlops.export import (
    ExportConfig,
    export_model,
    v1_1_config,
    v1_1_notes,
    verify_export,
)
from opensora_mlops.models.stdit2 import STDiT2, build_model, load_opensora_checkpoint
from opensora_mlops.models.vae import VideoAutoencoder
from opensora_mlops.pipelines.export import nodes
from opensora_mlops.pipelines.export.pipeline import create_pipeline

TEXT_ENCODER = {"type": "minilm", "max_length": 32}


# Open-Sora v1.1.0's STDiT2Config.__init__ arguments (opensora/models/stdit/stdit2.py)
V11_CONFIG_FIELDS = {
    "input_size",
    "input_sq_size",
    "in_channels",
    "patch_size",
    "hidden_size",
    "depth",
    "num_heads",
    "mlp_ratio",
    "class_dropout_prob",
    "pred_sigma",
    "drop_path",
    "no_temporal_pos_emb",
    "caption_channels",
    "model_max_length",
    "freeze",
    "qk_norm",
    "enable_flash_attn",
    "enable_layernorm_kernel",
}


@pytest.fixture(scope="module")
def components(tmp_path_factory):
    root = tmp_path_factory.mktemp("components")
    torch.manual_seed(0)
    build_model("STDiT2-tiny").save_pretrained(root / "weights")
    VideoAutoencoder.tiny(seed=0).save_pretrained(root / "vae")
    return root


@pytest.fixture(scope="module")
def exported(components, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "export"
    manifest = export_model(
        components / "weights",
        {"type": "pretrained", "from_pretrained": str(components / "vae")},
        TEXT_ENCODER,
        {"out_dir": str(out), "model_name": "tiny-test-model", "write_v1_1_pth": True},
        data_summary={"clips": 3, "hours": 0.01},
        scores={"adherence.trained.adherence": 0.25},
        source={"stage": "stage3"},
    )
    return out, manifest


def test_export_directory_layout_and_integrity(components, exported):
    out, manifest = exported
    for name in (
        "model/config.json",
        "model/model.safetensors",
        "vae/config.json",
        "text_encoder.json",
        "export.json",
        "README.md",
        "opensora_v1_1/config.json",
        "opensora_v1_1/model.safetensors",
        "opensora_v1_1/model.pth",
    ):
        assert (out / name).is_file(), name
    assert json.loads((out / "text_encoder.json").read_text()) == TEXT_ENCODER
    assert manifest["vae"]["copied"] and manifest["vae"]["location"] == "vae"
    assert manifest["num_parameters"] == sum(
        p.numel() for p in STDiT2.from_pretrained(components / "weights").parameters()
    )
    assert verify_export(out)["model_name"] == "tiny-test-model"
    # the weights are the trained ones, bit for bit
    original = load_file(str(components / "weights" / "model.safetensors"))
    copied = load_file(str(out / "model" / "model.safetensors"))
    assert original.keys() == copied.keys() and all(torch.equal(original[k], copied[k]) for k in original)
    card = (out / "README.md").read_text()
    for text in (
        "# tiny-test-model",
        "## Training data",
        "| clips | 3 |",
        "adherence.trained.adherence | 0.2500",
        "Open-Sora 1.1 compatibility",
        "[32, 384]",
        "[200, 4096]",
        "qk_norm_legacy",
    ):
        assert text in card, text


def test_tampering_is_detected(exported, tmp_path):
    out, _ = exported
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / "text_encoder.json").write_text('{"type": "minilm", "max_length": 64}\n')
    (copy / "vae" / "config.json").unlink()
    with pytest.raises(ValueError, match=r"text_encoder.json changed; vae/config.json missing"):
        verify_export(copy)


def test_v1_1_checkpoint_loads_strictly_with_1_1_key_names(exported):
    out, manifest = exported
    config = json.loads((out / "opensora_v1_1" / "config.json").read_text())
    assert config["model_type"] == "STDiT2" and config["architectures"] == ["STDiT2"]
    assert set(config) - {"model_type", "architectures"} == V11_CONFIG_FIELDS
    assert config["caption_channels"] == 384 and config["model_max_length"] == 32
    # 1.1-format file -> a fresh model, strictly (missing/unexpected keys or shapes would raise)
    torch.manual_seed(123)
    fresh = build_model("STDiT2-tiny")
    with pytest.warns(UserWarning, match="qk_norm_legacy"):
        load_opensora_checkpoint(fresh, out / "opensora_v1_1" / "model.safetensors")
    reference = STDiT2.from_pretrained(out / "model").state_dict()
    assert all(torch.equal(v, reference[k]) for k, v in fresh.state_dict().items())
    # the .pth variant is a plain state dict readable with weights_only=True
    pth = torch.load(out / "opensora_v1_1" / "model.pth", map_location="cpu", weights_only=True)
    assert set(pth) == set(reference)
    notes = manifest["opensora_v1_1"]
    assert notes["y_embedding_shape"] == [32, 384] and notes["matches_released_xl2_shapes"] is False


def test_xl2_config_matches_the_released_checkpoint_shapes():
    with torch.device("meta"):
        model = build_model("STDiT2-XL/2")
    cfg = {
        "input_sq_size": 512,
        "in_channels": 4,
        "patch_size": [1, 2, 2],
        "hidden_size": 1152,
        "depth": 28,
        "num_heads": 16,
        "mlp_ratio": 4.0,
        "class_dropout_prob": 0.1,
        "pred_sigma": True,
        "caption_channels": 4096,
        "model_max_length": 200,
        "qk_norm": True,
        "qk_norm_legacy": True,
        "final_layer_legacy": True,
    }
    notes = v1_1_notes(cfg, model.state_dict())
    assert notes["matches_released_xl2_shapes"] is True
    assert notes["y_embedding_shape"] == [200, 4096] == notes["released_y_embedding_shape"]
    assert v1_1_config(cfg)["depth"] == 28


def test_vae_is_referenced_when_too_large_to_copy(components, tmp_path):
    manifest = export_model(
        components / "weights",
        components / "vae",
        TEXT_ENCODER,
        {"out_dir": str(tmp_path / "ref"), "copy_vae_max_mb": 0, "write_v1_1": False},
    )
    assert manifest["vae"] == {
        **manifest["vae"],
        "copied": False,
        "location": str((components / "vae").resolve()),
    }
    assert not (tmp_path / "ref" / "vae").exists() and not (tmp_path / "ref" / "opensora_v1_1").exists()
    assert "(referenced path)" in (tmp_path / "ref" / "README.md").read_text()


def test_mismatched_components_and_bad_config_are_errors(components, tmp_path):
    torch.manual_seed(0)
    build_model("STDiT2-tiny", caption_channels=48).save_pretrained(tmp_path / "narrow")
    with pytest.raises(ConfigError, match="384-d embeddings, the model expects 48"):
        export_model(tmp_path / "narrow", components / "vae", TEXT_ENCODER, {"out_dir": str(tmp_path / "x")})
    with pytest.raises(FileNotFoundError, match="VAE directory not found"):
        export_model(
            components / "weights", tmp_path / "no-vae", TEXT_ENCODER, {"out_dir": str(tmp_path / "x")}
        )
    with pytest.raises(ConfigError, match="unknown key"):
        ExportConfig.from_dict({"outdir": "x"})


def test_pipeline_wiring():
    pipeline = create_pipeline()
    assert pipeline.inputs() == {
        "stage3.model",
        "evaluation_metrics",
        "stage3.filtered_clips",
        "params:export",
    }
    assert pipeline.all_outputs() == {"export.manifest", "export.registration"}


def test_pyfunc_round_trip_through_the_registry(components, tmp_path, mlflow_sqlite_store):
    """The export node, then the registration node inside a parent run, then load by registry URI."""
    import shutil

    from opensora_mlops.diffusion import build_scheduler, save_scheduler

    weights = tmp_path / "weights"  # trained with v-prediction and meant to be sampled at guidance 3.5
    shutil.copytree(components / "weights", weights)
    save_scheduler(build_scheduler({"type": "iddpm", "prediction": "v", "cfg_scale": 3.5}), weights)
    stage_model = {
        "stage": "stage3",
        "weights_dir": str(weights),
        "text_encoder": TEXT_ENCODER,
        "vae": {"type": "pretrained", "from_pretrained": str(components / "vae")},
        "steps": 30,
    }
    clips = pd.DataFrame(
        {
            "path": ["a.mp4", "b.mp4"],
            "duration": [2.0, 3.0],
            "height": [144, 144],
            "width": [256, 256],
            "fps": [24.0, 24.0],
        }
    )
    served = tmp_path / "served"
    params = {"out_dir": str(tmp_path / "export"), "model_name": "opensora-tiny-test", "write_v1_1": False,
              "pyfunc_output_root": str(served), "pyfunc_max_pixels": 3 * 32 * 32}
    metrics = {"adherence": {"trained": {"adherence": 0.5}}, "vbench": {"trained": {"imaging_quality": 0.7}}}
    manifest = nodes.export_stage_model(stage_model, metrics, clips, params)
    assert manifest["data_summary"]["clips"] == 2 and manifest["data_summary"]["hours"] == pytest.approx(
        5 / 3600, abs=1e-4
    )
    assert manifest["scores"] == {"adherence.trained.adherence": 0.5, "vbench.trained.imaging_quality": 0.7}

    mlflow.set_tracking_uri(mlflow_sqlite_store(tmp_path / "mlflow.db"))
    try:
        experiment = mlflow.create_experiment(
            "export-test", artifact_location=(tmp_path / "artifacts").as_uri()
        )
        assert nodes.register_model(manifest, params)["registered"] is False  # no active run: nothing logged
        with mlflow.start_run(experiment_id=experiment, run_name="kedro run export"):
            mlflow.set_tag("git_commit", "0123abc")  # what the project's hooks tag the parent run with
            registration = nodes.register_model(manifest, params)
        assert registration["registered"] and registration["model_uri"] == "models:/opensora-tiny-test/1"
        # the first version: the champion, described by its model card, scores and provenance as tags
        assert registration["alias"] == "champion" and "no champion yet" in registration["reason"]
        assert registration["alias_uri"] == "models:/opensora-tiny-test@champion"
        client = mlflow.MlflowClient()
        version = client.get_model_version_by_alias("opensora-tiny-test", "champion")
        assert version.version == 1 and version.run_id == registration["run_id"]
        assert version.description == (tmp_path / "export" / "README.md").read_text(encoding="utf-8")
        assert "## Evaluation" in version.description
        assert version.tags["eval.adherence.trained.adherence"] == "0.5"
        assert version.tags["eval.vbench.trained.imaging_quality"] == "0.7"
        assert {k: version.tags[k] for k in ("stage", "steps", "git_commit", "source_run_id")} == {
            "stage": "stage3", "steps": "30", "git_commit": "0123abc", "source_run_id": registration["run_id"]}
        # the source run (the nested export run) carries the scores as metrics and the export params
        source = client.get_run(registration["run_id"])
        assert source.data.metrics == {"adherence.trained.adherence": 0.5, "vbench.trained.imaging_quality": 0.7}
        assert source.data.params.items() >= {"stage": "stage3", "steps": "30", "git_commit": "0123abc",
                                              "model_name": "opensora-tiny-test",
                                              "registered_model_name": "opensora-tiny-test"}.items()

        model = mlflow.pyfunc.load_model(registration["model_uri"])
        out_dir = served / "generated"
        prompts = [
            "a red circle moving left quickly on a gray background",
            "a blue square on a black background",
        ]
        result = model.predict(
            pd.DataFrame({"prompt": prompts}),
            params={
                "num_frames": 3,
                "height": 32,
                "width": 32,
                "steps": 2,
                "fps": 8.0,
                "output_dir": "generated",
            },
        )
        assert list(result["prompt"]) == prompts
        # no cfg_scale in the request: the guidance saved with the weights, not a default of the pyfunc's
        assert {json.loads(Path(p).read_text())["cfg_scale"] for p in result["settings_path"]} == {3.5}
        again = model.predict(pd.DataFrame({"prompt": prompts[:1]}),
                              params={"num_frames": 1, "height": 32, "width": 32, "steps": 2, "cfg_scale": 2.0})
        assert json.loads(Path(again["settings_path"][0]).read_text())["cfg_scale"] == 2.0
        for _, row in result.iterrows():
            assert Path(row["video_path"]).resolve().is_relative_to(out_dir.resolve())
            frames, fps = read_video(row["video_path"])
            assert frames.shape == (3, 32, 32, 3) and fps == pytest.approx(8.0)
            assert Path(row["gif_path"]).is_file()
            assert json.loads(Path(row["settings_path"]).read_text())["prompt"] == row["prompt"]
        with pytest.raises(Exception, match="prompt"):
            model.predict(pd.DataFrame({"text": ["x"]}))
        # a served model writes only under its root and refuses requests over its size budget
        small = {"num_frames": 3, "height": 32, "width": 32, "steps": 2}
        for escape in (str(tmp_path / "elsewhere"), "../elsewhere"):
            with pytest.raises(Exception, match="output root"):
                model.predict(pd.DataFrame({"prompt": ["x"]}), params={**small, "output_dir": escape})
        with pytest.raises(Exception, match="max_pixels"):
            model.predict(pd.DataFrame({"prompt": ["x"]}), params={**small, "num_frames": 4})
        assert not (tmp_path / "elsewhere").exists()
    finally:
        mlflow.set_tracking_uri("")
