"""The Kedro ``ingestion`` pipeline run in-process on a tiny synthetic corpus and on a user folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from opensora_mlops.config import ConfigError
from opensora_mlops.data.video_io import write_video

REPO = Path(__file__).resolve().parents[1]

TINY_SYNTHETIC = {
    "seed": 11,
    "num_single_shot": 2,
    "single_shot_sizes": [[64, 96]],
    "single_shot_duration_seconds": [1.0, 1.0],
    "num_videos": 2,
    "sizes": [[64, 96], [96, 64]],
    "duration_seconds": [1.0, 1.5],
    "shots_per_video": [2, 2],
    "min_shot_seconds": 0.4,
    "num_large": 0,
    "defect_duration_seconds": [0.5, 0.5],
    # runtime params merge into conf/base's, so the kinds not wanted here are set to 0 explicitly
    "defects": {"zero_bytes": 1, "truncated": 1, "not_video": 1, "dark": 1, "static": 0, "text": 0, "blurred": 0},
    "num_images": 1,
}


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A copy of the project's config in tmp_path (catalog paths are relative to the working dir)."""
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    shutil.copytree(REPO / "conf" / "base", tmp_path / "conf" / "base")
    (tmp_path / "conf" / "local").mkdir()
    (tmp_path / "src").mkdir()  # bootstrap_project wants a source dir; the package itself is installed
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _run(project: Path, ingestion: dict):
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    bootstrap_project(project)
    with KedroSession.create(project_path=project, runtime_params={"ingestion": ingestion}) as session:
        session.run(pipeline_name="ingestion")


def test_ingestion_pipeline_synthetic(project):
    _run(project, {"synthetic": TINY_SYNTHETIC, "progress": False})
    raw = pd.read_parquet(project / "data/01_raw/raw_metadata.parquet")
    quarantine = pd.read_parquet(project / "data/01_raw/raw_quarantine.parquet")
    truth = pd.read_parquet(project / "data/01_raw/synthetic_ground_truth.parquet")
    summary = json.loads((project / "data/08_reporting/ingestion_summary.json").read_text())

    files = truth.drop_duplicates("path")
    assert len(files) == 2 + 2 + 4 + 1 == len(raw) + len(quarantine)  # every file accounted for
    single = files[files["path"].str.contains("/clip_")]
    assert len(single) == 2 and (single["kind"] == "good").all() and (single["shot_index"] == 0).all()
    assert set(quarantine["path"]) == set(files[files["kind"].isin(["zero_bytes", "truncated", "not_video"])]["path"])
    assert set(raw["path"]) == set(files[files["kind"].isin(["good", "dark", "image"])]["path"])
    merged = raw.merge(files, on="path", suffixes=("", "_truth"))
    assert (merged["height"] == merged["height_truth"]).all() and (merged["width"] == merged["width_truth"]).all()
    assert (merged["num_frames"] == merged["num_frames_truth"]).all()
    assert raw["text"].notna().all() and (raw["source"] == "synthetic").all()
    assert summary["accepted"] == len(raw) and summary["quarantined"] == 3
    assert summary["quarantined_by_reason"] == {
        "empty file (0 bytes)": 1, "not a readable video": 1, "truncated or corrupt video": 1,
    }
    assert (project / "data/01_raw/synthetic/ground_truth.json").exists()
    assert "PASSED" in (project / "data/08_reporting/contracts/raw_metadata.md").read_text()


def test_ingestion_pipeline_user_folder(project):
    root = project / "data/01_raw/user"
    frames = np.full((5, 48, 80, 3), 60, dtype=np.uint8)
    write_video(root / "clip_a.mp4", frames, fps=25)
    write_video(root / "clip_b.mp4", frames[:3], fps=30)
    (root / "broken.mp4").write_bytes(b"")
    (root / "captions.csv").write_bytes(b"path,text\nclip_a.mp4,a grey field\nclip_b.mp4,caf\xe9\n")
    _run(project, {"source": "folder", "folder": {"root": str(root), "captions_csv": "captions.csv"},
                   "progress": False})
    raw = pd.read_parquet(project / "data/01_raw/raw_metadata.parquet")
    quarantine = pd.read_parquet(project / "data/01_raw/raw_quarantine.parquet")
    assert list(raw["path"]) == [str((root / "clip_a.mp4").resolve())]
    assert raw.loc[0, "text"] == "a grey field" and raw.loc[0, "num_frames"] == 5
    assert dict(zip(quarantine["path"].map(lambda p: Path(p).name), quarantine["reason"])) == {
        "clip_b.mp4": "caption not valid UTF-8", "broken.mp4": "empty file (0 bytes)",
    }
    assert set(quarantine["stage"]) == {"ingestion.list", "ingestion.probe"}
    summary = json.loads((project / "data/08_reporting/ingestion_summary.json").read_text())
    assert summary["candidates"] == 2 == summary["accepted"] + summary["quarantined_by_stage"]["ingestion.probe"]
    assert summary["quarantined"] == 2 and summary["source"] == "folder"
    assert pd.read_parquet(project / "data/01_raw/synthetic_ground_truth.parquet").empty


def test_default_corpus_is_made_for_the_default_buckets():
    """conf/base: every single-shot size still fits a stage-1 video bucket after curation's resize, a
    clip holds several training windows, and "slowly" moves >= 15 % of the frame over one window."""
    import yaml

    from opensora_mlops.curation.cutting import target_size
    from opensora_mlops.curation.synthetic import SPEEDS, SyntheticConfig
    from opensora_mlops.data.aspect import PIXEL_SLACK, aspect_tables
    from opensora_mlops.data.dataset import temporal_crop_indices

    def params(name):
        return yaml.safe_load((REPO / "conf" / "base" / f"parameters_{name}.yml").read_text())

    corpus = SyntheticConfig.from_dict(params("ingestion")["ingestion"]["synthetic"])
    shorter = params("curation")["curation"]["clips"]["shorter_side"]
    stage1 = params("bucketing")["bucketing"]["stages"]["stage1"]
    interval = int(stage1["frame_interval"])
    video_frames = max(int(t) for t in stage1["bucket_config"]["144p"])
    assert 150 <= corpus.num_single_shot <= 300
    fewest = int(corpus.single_shot_duration_seconds[0] * min(corpus.fps_choices))
    assert fewest > video_frames * interval  # bucketing wants more than T * frame_interval frames
    assert fewest // (video_frames * interval) >= 3  # non-overlapping training windows per clip
    for h, w in set(corpus.single_shot_sizes):
        assert (h, w) == target_size(h, w, shorter)  # curation keeps the size
        assert h * w >= PIXEL_SLACK * aspect_tables()["144p"].pixels, (h, w)
    assert sum(1 for h, w in corpus.single_shot_sizes if (h, w) == (144, 256)) / len(corpus.single_shot_sizes) >= 0.4
    window = temporal_crop_indices(video_frames * interval + 1, video_frames, interval, np.random.default_rng(0))
    assert SPEEDS["slowly"] * (window[-1] - window[0]) >= 0.15


def test_ingestion_params_are_strict(project):
    from opensora_mlops.pipelines.ingestion.nodes import collect_candidates

    with pytest.raises(ConfigError, match="sorce"):
        collect_candidates({"sorce": "folder"})
    with pytest.raises(ConfigError, match="num_vidoes"):
        collect_candidates({"synthetic": {"num_vidoes": 1}})


def test_contract_node_stops_a_table_the_probe_let_through(tmp_path):
    """Probe limits loosened past the contract (fps ≤ 240): the contract node refuses the table."""
    from fractions import Fraction

    import av

    from opensora_mlops.data.contracts import ContractError
    from opensora_mlops.pipelines.ingestion import nodes

    root = tmp_path / "user"
    root.mkdir()
    write_video(root / "ok.mp4", np.zeros((4, 32, 32, 3), dtype=np.uint8), fps=24)
    with av.open(str(root / "fast.mp4"), mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(1000))
        stream.height = stream.width = 32
        stream.pix_fmt = "yuv420p"
        for _ in range(4):
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    params = {"source": "folder", "folder": {"root": str(root)}, "probe": {"max_fps": 2000},
              "contracts_dir": str(tmp_path / "contracts"), "progress": False}
    candidates, _, _, _ = nodes.collect_candidates(params)
    probed, quarantine = nodes.probe_candidates(candidates, params)
    assert len(probed) == 2 and quarantine.empty
    with pytest.raises(ContractError) as info:
        nodes.validate_raw_metadata(probed, params)
    assert "column='fps'" in str(info.value) and str((root / "fast.mp4").resolve()) in str(info.value)
    assert "FAILED" in (tmp_path / "contracts" / "raw_metadata.md").read_text()
