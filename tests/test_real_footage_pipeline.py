"""A folder of camera-like footage through the Kedro pipelines, as a new user would run it: several
codecs and containers, an odd size, a variable-frame-rate file, a heavily compressed one, a still, a
PNG named .mp4 and a text file; first without captions (ingestion stops at once with the fix), then
with a captions CSV (ingestion -> curation -> bucketing, and stage 1's pre-flight), then with one
caption edited (it reaches clip_metadata; nothing is re-cut)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from footage import (
    camera_clip,
    fence,
    grass,
    photo,
    shallow_focus,
    street_sign,
    variable_times,
    write_clip,
    write_timed,
)
from opensora_mlops.training import tiny

REPO = Path(__file__).resolve().parents[1]
CAPTIONS = {
    "lake/pagoda_then_dahlia.mp4": "a pagoda above a lake; then a dahlia in a garden",
    "garden.mov": "grass in the wind; then a white picket fence",
    "odd_size.webm": "the camera zooms in on a pagoda; then a pagoda behind blurred branches",
    "screen_capture.mkv": "a green street sign; then a dahlia swaying",
    "crushed.mp4": "a dahlia, badly compressed",
    "portrait.mp4": "a portrait of an officer",
    "dahlia.jpg": "a dahlia",
    "fake.mp4": "not really a video",
}


def _shots(*parts):
    return np.concatenate(parts)


@pytest.fixture(scope="module")
def footage(tmp_path_factory):
    root = tmp_path_factory.mktemp("footage")
    china, flower, hopper = photo("china"), photo("flower"), photo("hopper")
    size = (160, 284)  # the clip size: nothing to resize, shots of 1-1.6 s
    write_clip(root / "lake" / "pagoda_then_dahlia.mp4",
               _shots(camera_clip(china, 30, size, "pan"), camera_clip(flower, 30, size, "shake", seed=1)), 25.0)
    write_clip(root / "garden.mov", _shots(camera_clip(grass(), 30, size, "pan"),
                                            camera_clip(fence(china), 30, size, "pan")), 25.0)
    odd = (161, 287)
    write_clip(root / "odd_size.webm", _shots(camera_clip(china, 30, odd, "zoom"),
                                               camera_clip(shallow_focus(china, (0.45, 0.4, 0.2)), 30, odd, "shake")),
               24.0, codec="libvpx-vp9", crf=30)
    # 60 frames shown for 16.7 ms (1 s), then 30 for 50 ms (1.5 s)
    sign = _shots(camera_clip(street_sign(china), 60, size, "pan", amount=0.04), camera_clip(flower, 30, size, "shake"))
    write_timed(root / "screen_capture.mkv", sign, variable_times([(60, 16.7), (30, 50.0)]))
    write_clip(root / "crushed.mp4", camera_clip(flower, 30, size, "shake"), 25.0, crf=51)
    write_clip(root / "portrait.mp4", camera_clip(hopper, 30, (284, 160), "pan"), 25.0)
    Image.fromarray(camera_clip(flower, 1, (300, 400), "static")[0]).save(root / "dahlia.jpg")
    Image.fromarray(np.full((48, 64, 3), 90, np.uint8)).save(root / "fake.png")
    (root / "fake.mp4").write_bytes((root / "fake.png").read_bytes())
    (root / "fake.png").unlink()
    (root / "notes.txt").write_text("shot list")
    return root


@pytest.fixture
def project(tmp_path, monkeypatch):
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    shutil.copytree(REPO / "conf" / "base", tmp_path / "conf" / "base")
    (tmp_path / "conf" / "local").mkdir()
    (tmp_path / "src").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OPENSORA_MLFLOW", "0")
    return tmp_path


def _run(project, pipeline, params, **kwargs):
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    bootstrap_project(project)
    with KedroSession.create(project_path=project, runtime_params=params) as session:
        session.run(pipeline_names=[pipeline], **kwargs)


def _params(root, captions_csv=None):
    return {"ingestion": {"source": "folder", "progress": False,
                          "folder": {"root": str(root), "captions_csv": captions_csv}},
            "curation": {"partitions": {"progress": False}}}


def _write_captions(root, captions):
    lines = ["path,text"] + [f'{path},"{text}"' for path, text in captions.items()]
    (root / "captions.csv").write_text("\n".join(lines) + "\n")


@pytest.mark.slow
def test_folder_of_real_footage_end_to_end(project, footage):
    from opensora_mlops.curation.captions import CaptionSourceError

    # 1. no captions anywhere: ingestion stops before probing, naming both ways to get captions
    with pytest.raises(CaptionSourceError) as info:
        _run(project, "ingestion", _params(footage))
    message = str(info.value)
    assert "ingestion.folder.captions_csv" in message and "curation.captions.source: vlm" in message
    assert not (project / "data/01_raw/raw_metadata.parquet").exists()

    # 2. with a captions CSV
    _write_captions(footage, CAPTIONS)
    params = _params(footage, "captions.csv")
    _run(project, "ingestion", params)
    raw = pd.read_parquet(project / "data/01_raw/raw_metadata.parquet")
    quarantine = pd.read_parquet(project / "data/01_raw/raw_quarantine.parquet")
    names = {Path(p).name: row for p, row in zip(raw["path"], raw.to_dict("records"), strict=True)}
    assert set(names) == {Path(p).name for p in CAPTIONS} - {"fake.mp4"}
    assert (names["odd_size.webm"]["height"], names["odd_size.webm"]["width"]) == (161, 287)
    assert names["screen_capture.mkv"]["vfr"] and not names["garden.mov"]["vfr"]
    reasons = dict(zip(quarantine["path"].map(lambda p: Path(p).name), quarantine["reason"], strict=True))
    assert reasons == {"fake.mp4": "image file with a video suffix", "notes.txt": "unsupported file type"}

    _run(project, "curation", params)
    clips = pd.read_parquet(project / "data/04_feature/clip_metadata.parquet")
    report = json.loads((project / "data/08_reporting/curation_report.json").read_text())
    source = clips["source_path"].map(lambda p: Path(p).name)
    assert source.value_counts().to_dict() == {"pagoda_then_dahlia.mp4": 2, "garden.mov": 2, "odd_size.webm": 2,
                                               "screen_capture.mkv": 2, "crushed.mp4": 1, "portrait.mp4": 1,
                                               "dahlia.jpg": 1}
    assert clips["clip_id"].is_unique and clips["path"].map(os.path.isfile).all()
    texts = dict(zip(clips["clip_id"], clips["text"], strict=True))
    lake = clips[source == "pagoda_then_dahlia.mp4"].sort_values("scene_index")["clip_id"].tolist()
    assert [texts[c] for c in lake] == ["A pagoda above a lake.", "A dahlia in a garden."]
    vfr = clips[source == "screen_capture.mkv"]
    assert vfr["fps"].between(59.9, 60.0).all()  # re-timed to the fast passage's rate (16.7 ms)

    stage1 = pd.read_parquet(project / "data/04_feature/stage1_filtered_clips.parquet")
    dropped = pd.read_parquet(project / "data/04_feature/curation_quarantine.parquet")
    dropped1 = dropped[dropped["stage"] == "stage1"].assign(name=lambda d: d["source_path"].map(lambda p: Path(p).name))
    by_source = dropped1.groupby("name")["decided_by"].apply(lambda v: "; ".join(v))
    # the sign shot is dropped by the text detector, the crushed clip by the aesthetic score; ordinary
    # footage (grass, a fence, shallow focus, a portrait, the odd-sized webm) is kept
    assert "ocr:ppocrv4-det-area" in by_source["screen_capture.mkv"]
    assert "aes:classical-sharpest-region-exposure-colour" in by_source["crushed.mp4"]
    kept = set(stage1["source_path"].map(lambda p: Path(p).name))
    assert {"pagoda_then_dahlia.mp4", "garden.mov", "odd_size.webm", "portrait.mp4", "dahlia.jpg"} <= kept
    assert len(stage1[stage1["source_path"].str.endswith("garden.mov")]) == 2
    assert report["dropped_by_scorer"]["stage1"]["ocr:ppocrv4-det-area"] >= 1
    assert report["caption_sources"] == {"metadata": len(clips)} and report["variable_frame_rate_sources"] == 1

    # 3. bucketing, and stage 1's pre-flight with the shipped training settings
    _run(project, "bucketing", params)
    table = pd.read_parquet(project / "data/05_model_input/stage1_bucket_table.parquet")
    assert table["keep"].sum() > 0
    from opensora_mlops.training.latents import check_bucket_table
    from opensora_mlops.training.preflight import check_stage_batches

    check_stage_batches(check_bucket_table(table), "stage1")

    # ... and a short stage 1 on these clips (the tiny VAE and model: the footage, not the model, is tested)
    (project / "data/06_models").mkdir(parents=True, exist_ok=True)
    (project / "data/06_models/vae.json").write_text(json.dumps({"type": "tiny"}))
    training = {"training_shared": {"model": dict(tiny.TINY_MODEL), "sample_every": 0, "threads": 1},
                "stage1": {"training": {"max_steps": 2, "ckpt_every": 2}}}
    _run(project, "stage1", params | training)
    model = json.loads((project / "data/06_models/stage1.json").read_text())
    assert model["steps"] == 2
    validation = json.loads((project / "data/08_reporting/stage1/validation_metrics.json").read_text())
    assert np.isfinite(validation["val_loss"])

    # 4. one caption edited: re-ingest and re-curate; the clips are not re-cut, the text is new
    mtimes = {p: os.stat(p).st_mtime_ns for p in clips["path"]}
    _write_captions(footage, CAPTIONS | {"portrait.mp4": "an officer in dress uniform in front of a flag"})
    _run(project, "ingestion", params)
    _run(project, "curation", params)
    again = pd.read_parquet(project / "data/04_feature/clip_metadata.parquet")
    new = again[again["source_path"].str.endswith("portrait.mp4")]["text"].item()
    assert new == "An officer in dress uniform in front of a flag."
    assert {p: os.stat(p).st_mtime_ns for p in again["path"]} == mtimes
    assert set(again["clip_id"]) == set(clips["clip_id"])
