"""Bucketing Kedro pipeline: namespaced stages, catalog entries, data contract, summary outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from kedro.config import OmegaConfigLoader
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner

from opensora_mlops.config import ConfigError
from opensora_mlops.data.buckets import BucketConfig, StageBucketing
from opensora_mlops.data.contracts import ContractError
from opensora_mlops.data.sampler import VariableVideoBatchSampler
from opensora_mlops.pipelines.bucketing import nodes
from opensora_mlops.pipelines.bucketing.pipeline import STAGES, create_pipeline
from opensora_mlops.resources import load_reference

ROOT = Path(__file__).resolve().parents[1]


def params(env: str | None = None) -> dict:
    loader = OmegaConfigLoader(str(ROOT / "conf"), base_env="base", default_run_env="local", env=env)
    return loader["parameters"]["bucketing"]


def filtered_clips(folder: Path, n: int = 60, seed: int = 0) -> pd.DataFrame:
    """A stage's filtered-clip table (curation's columns) over real files in ``folder``."""
    rng = np.random.default_rng(seed)
    sizes = [(144, 256), (256, 144), (240, 426), (426, 240), (240, 320), (720, 1280), (100, 100)]
    rows = []
    for i in range(n):
        h, w = sizes[rng.integers(len(sizes))]
        image = i % 10 == 0
        frames = 1 if image else int(rng.integers(10, 100))
        fps = 0.0 if image else 24.0
        path = folder / (f"img{i}.png" if image else f"clip{i}.mp4")
        path.write_bytes(b"")  # bucketing reads metadata only; the contract checks the files exist
        rows.append(
            dict(path=str(path), text=f"clip {i}", num_frames=frames, height=h, width=w, aspect_ratio=h / w,
                 fps=fps if not image else np.nan, resolution=h * w, duration=frames / 24.0,
                 scene_start=0.0, scene_end=0.0 if image else frames / 24.0, frame_start=0, frame_end=frames)
        )  # fmt: skip
    return pd.DataFrame(rows)


def test_base_and_cluster_parameters_parse():
    for stage, block in params()["stages"].items():
        spec = StageBucketing.from_params(block, stage)
        assert {s.resolution for s in spec.bucket_config.specs} <= {"144p", "240p"}
    cluster = params("cluster")
    for stage in STAGES:
        spec = StageBucketing.from_params(cluster["stages"][stage], stage)
        reference = load_reference()["stages"][stage]
        assert spec.frame_interval == reference["frame_interval"] == 3
        assert spec.bucket_config.to_dict() == BucketConfig(reference["bucket_config"]).to_dict()


def test_pipeline_writes_validated_tables_and_summaries(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "clips").mkdir()
    catalog_config = yaml.safe_load((ROOT / "conf/base/catalog_bucketing.yml").read_text())
    catalog = DataCatalog.from_config(catalog_config)
    bucketing = params()
    bucketing["settings"]["contracts_dir"] = str(tmp_path / "contracts")
    catalog["params:bucketing"] = MemoryDataset(bucketing)
    catalog["params:seed"] = MemoryDataset(42)
    for i, stage in enumerate(STAGES):
        catalog[f"{stage}.filtered_clips"] = MemoryDataset(filtered_clips(tmp_path / "clips", seed=i))
    pipe = create_pipeline()
    assert {n.namespace for n in pipe.nodes} == set(STAGES)
    assert pipe.inputs() == {*(f"{s}.filtered_clips" for s in STAGES), "params:bucketing", "params:seed"}
    SequentialRunner().run(pipe, catalog)

    for stage in STAGES:
        table = pd.read_parquet(tmp_path / f"data/05_model_input/{stage}_bucket_table.parquet")
        assert len(table) == 60 and table["keep"].any()
        assert table.loc[table["height"] == 100, "drop_reason"].eq("no_bucket_fits").all()  # too small
        # the stored assignment is what the sampler would draw for epoch 0
        spec = StageBucketing.from_params(bucketing["stages"][stage])
        sampler = VariableVideoBatchSampler(table, spec.bucket_config, frame_interval=spec.frame_interval, seed=42)
        for batch in sampler:
            assert all(table["bucket_id"].iloc[k.row] == k.bucket_id for k in batch)
        summary = pd.read_csv(tmp_path / f"data/08_reporting/bucketing/{stage}_bucket_summary.csv")
        assert summary["samples"].sum() == table["keep"].sum()
        report = json.loads((tmp_path / f"data/08_reporting/bucketing/{stage}_bucket_summary.json").read_text())
        assert report["kept"] == table["keep"].sum() and report["rows"] == 60
        assert report["full_batches_per_epoch"] == sum(
            len(g) // int(g["batch_size"].iloc[0]) for _, g in table[table["keep"]].groupby("bucket_id")
        )
        png = tmp_path / f"data/08_reporting/bucketing/{stage}_buckets.png"
        assert png.read_bytes()[:4] == b"\x89PNG"
        assert (tmp_path / f"contracts/{stage}.bucket_table.json").is_file()


def test_contract_rejects_an_oversized_bucket(tmp_path):
    (tmp_path / "clips").mkdir()
    bucketing = params()
    bucketing["settings"]["contracts_dir"] = str(tmp_path / "contracts")
    table = nodes.assign_stage_buckets(filtered_clips(tmp_path / "clips"), bucketing, 1, stage="stage2")
    nodes.validate_bucket_table(table, bucketing, stage="stage2")
    bad = table.copy()
    video = bad.index[(bad["keep"]) & (bad["bucket_num_frames"] == 8)][0]
    bad.loc[video, "num_frames"] = 8  # 8 frames cannot fill an 8-frame bucket (T > t is strict)
    with pytest.raises(ContractError, match="bucket_fits_sample"):
        nodes.validate_bucket_table(bad, bucketing, stage="stage2")
    mixed = table.copy()
    mixed.loc[mixed.index[mixed["keep"]][0], "drop_reason"] = "not_drawn"
    with pytest.raises(ContractError, match="bucket_columns_consistent"):
        nodes.validate_bucket_table(mixed, bucketing, stage="stage2")
    nothing = table.assign(keep=False, bucket_id=pd.NA, drop_reason="not_drawn")
    nothing[["bucket_resolution", "ar_key"]] = pd.NA
    with pytest.raises(ValueError, match="kept none of 60 clips"):
        nodes.validate_bucket_table(nothing, bucketing, stage="stage2")


def test_parameters_are_strict():
    bucketing = params()
    with pytest.raises(ConfigError, match="'setings'"):
        nodes.parse_params({**bucketing, "setings": {}}, "stage1")
    with pytest.raises(ConfigError, match="no 'stage9'"):
        nodes.parse_params(bucketing, "stage9")
    bad = json.loads(json.dumps(bucketing))
    bad["stages"]["stage1"]["bucket_config"]["140p"] = {"1": [1.0, 2]}
    with pytest.raises(ConfigError, match=r"unknown resolution '140p'; valid resolutions are: 144p"):
        nodes.parse_params(bad, "stage1")


def _bucket_table(tmp_path, counts: dict[tuple[str, int], int], batch: dict[tuple[str, int], int]) -> pd.DataFrame:
    """A kept-only bucket table: ``counts[(resolution, frames)]`` clips per bucket."""
    from opensora_mlops.data.aspect import get_aspect_table

    rows = []
    for (res, frames), n in counts.items():
        table = get_aspect_table(res)
        key = "0.56" if "0.56" in table.ratios else sorted(table.ratios)[0]
        h, w = table.ratios[key]
        for i in range(n):
            path = tmp_path / f"{res}-{frames}-{i}.mp4"
            path.write_bytes(b"x")
            rows.append({"path": str(path), "text": "a clip", "fps": 24.0, "num_frames": 48, "height": h,
                         "width": w, "bucket_id": f"{res}/{frames}/{key}", "bucket_resolution": res,
                         "bucket_num_frames": frames, "bucket_height": h, "bucket_width": w,
                         "batch_size": batch[(res, frames)], "keep": True, "ar_key": key, "drop_reason": None})
    return pd.DataFrame(rows)


def test_summary_warns_when_a_stage_has_no_full_batch(tmp_path, caplog):
    from opensora_mlops.pipelines.bucketing.nodes import summarise_buckets

    table = _bucket_table(tmp_path, {("144p", 8): 3, ("240p", 1): 1}, {("144p", 8): 4, ("240p", 1): 4})
    with caplog.at_level("WARNING"):
        _, report, _ = summarise_buckets(table, params(), "stage1")
    assert report["full_batches_per_epoch"] == 0 and len(report["warnings"]) == 1
    warning = report["warnings"][0]
    assert "stage1" in warning and "144p/8/0.56: 3 clips < batch 4" in warning
    assert "bucketing.stages.stage1.bucket_config" in warning and warning in caplog.text
    full = _bucket_table(tmp_path, {("144p", 8): 4}, {("144p", 8): 4})
    assert summarise_buckets(full, params(), "stage1")[1]["warnings"] == []


def test_training_refuses_an_empty_epoch_in_one_line_before_encoding(tmp_path):
    """cache_stage_latents checks the table with the sampler's rules first (every row is trained, the
    last batch of a bucket partial; an epoch is empty when there are fewer clips than ranks): the VAE
    below would fail to build if the node got as far as encoding."""
    from opensora_mlops.pipelines.training.nodes import cache_stage_latents
    from opensora_mlops.training.preflight import StageDataError, check_stage_batches

    one = _bucket_table(tmp_path, {("144p", 8): 1}, {("144p", 8): 4})
    stage = {"name": "stage1", "cache_root": str(tmp_path / "cache"), "world_size": 2,
             "cache": {"holdout_fraction": 0.0}}
    with pytest.raises(StageDataError) as info:
        cache_stage_latents(one, {"type": "no-such-vae"}, stage, {"text_encoder": {"type": "none"}})
    message = str(info.value)
    assert "\n" not in message and message.startswith("stage1: cannot train: 1 clip")
    assert "2 rank(s)" in message and "144p/8/0.56: 1 clip < batch 4" in message
    assert "bucketing.stages.stage1.bucket_config" in message and "batch_scale" in message
    assert not (tmp_path / "cache").exists()  # nothing was encoded
    few = _bucket_table(tmp_path, {("144p", 8): 3, ("240p", 1): 2}, {("144p", 8): 4, ("240p", 1): 4})
    check_stage_batches(few, "stage1")  # partial batches only: trainable (bucketing warns about it)
    check_stage_batches(few, "stage1", world_size=4)  # five clips, four ranks: batches are split
    with pytest.raises(StageDataError, match="6 rank"):
        check_stage_batches(few, "stage1", world_size=6)
    two = _bucket_table(tmp_path, {("144p", 8): 2}, {("144p", 8): 4})
    with pytest.raises(StageDataError, match="after holding out 1 for validation"):
        check_stage_batches(two, "stage1", world_size=2, holdout_fraction=0.4)
