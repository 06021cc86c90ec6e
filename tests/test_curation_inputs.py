"""Curation inputs nobody here made: variable frame rate (jittered and strongly variable timestamps),
an image under a video name, clips named alike in different containers, repeated rows and files,
a broken input table, and clip files that a killed run left half-written."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from footage import jittered_times, shot_of, shot_sequence, variable_times, write_timed
from opensora_mlops.curation import frames as F
from opensora_mlops.curation.curate import CurationConfig, check_input_table, run_clips, run_scenes
from opensora_mlops.curation.cutting import ClipConfig, cut_clips, plan_clips, remove_partials
from opensora_mlops.curation.probe import (
    REASON_IMAGE_AS_VIDEO,
    REASON_VFR,
    ProbeConfig,
    probe_media,
    probe_table,
)
from opensora_mlops.curation.scenes import Scene, SceneDetectionConfig, cut_frames, detect_scenes
from opensora_mlops.data.contracts import ContractError
from opensora_mlops.data.video_io import read_video, write_video

LENGTHS = [30, 24, 36, 30]  # four shots; cuts before frames 30, 54, 90
CUTS = [30, 54, 90]


def _config(tmp_path, **clips):
    return CurationConfig.from_dict({
        "scenes": {"min_scene_len": 6},
        "clips": {"min_seconds": 0.5, "max_seconds": 10.0, "shorter_side": None, **clips},
        "partitions": {"root": str(tmp_path / "parts"), "clips_dir": str(tmp_path / "clips"), "progress": False},
        "stages": {},
    })


def _probed(paths, **probe):
    candidates = pd.DataFrame({"path": [str(p) for p in paths], "source": "test", "text": "a clip"})
    return probe_table(candidates, probe, progress=False)


def _clip_shots(path):
    frames, fps = read_video(path)
    return [shot_of(f) for f in frames], fps


# ------------------------------------------------------------------------------------------- re-timing
def test_retime_is_identity_on_constant_rate_and_repeats_held_frames():
    times = [Fraction(i, 25) for i in range(10)]
    assert F.retime_map(times, Fraction(25)).tolist() == list(range(10))
    # frame 1 is held for 3 intervals: it is shown three times, then the stream continues
    held = [Fraction(0), Fraction(1, 25), Fraction(4, 25), Fraction(5, 25)]
    assert F.retime_map(held, Fraction(25)).tolist() == [0, 1, 1, 1, 2, 3]
    # frames shown shorter than one output interval are skipped
    fast = [Fraction(i, 50) for i in range(6)]
    assert F.retime_map(fast, Fraction(25)).tolist() == [0, 2, 4]
    assert F.map_cut(2, np.array([0, 1, 1, 1, 2, 3])) == 4  # the first output frame showing frame 2
    with pytest.raises(ValueError, match="positive"):
        F.retime_map(times, Fraction(0))


def test_constant_rate_is_the_fast_passage_snapped_and_jitter_is_measured():
    variable = [Fraction(t).limit_denominator(100000) for t in variable_times([(40, 16.7), (40, 100.0)])]
    assert F.constant_rate(variable, 240.0) == Fraction(60000, 1001)  # 59.9 measured -> 59.94
    assert F.constant_rate(variable, 30.0) == 30  # capped by max_fps
    jittered = [Fraction(t).limit_denominator(100000) for t in jittered_times(90, 30.0, 6.0)]
    assert F.constant_rate(jittered, 240.0) == 30  # jitter cancels out in the running median
    assert 0.3 < F.frame_jitter(jittered) < 1.0 < F.frame_jitter(variable)
    assert F.frame_jitter([Fraction(i, 24) for i in range(48)]) == pytest.approx(0.0, abs=1e-9)


# ---------------------------------------------------------------------------------------------- probe
@pytest.fixture(scope="module")
def vfr_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("vfr")
    frames = shot_sequence(LENGTHS)
    jittered = write_timed(root / "phone.mp4", frames, jittered_times(len(frames), 30.0, 6.0))
    variable = write_timed(root / "screen.mkv", frames, variable_times([(30, 16.7), (24, 100.0), (36, 33.3), (30, 50.0)]))
    return jittered, variable


def test_probe_flags_strongly_variable_video_and_counts_it_retimed(vfr_files):
    jittered, variable = vfr_files
    phone = probe_media(jittered)
    assert not phone.vfr and phone.num_frames == sum(LENGTHS) and phone.fps == pytest.approx(30.0, rel=0.01)
    assert 0 < phone.frame_jitter < 1.0
    screen = probe_media(variable)
    assert screen.vfr and screen.fps == pytest.approx(59.94, abs=0.01)
    # 5.6 s at 59.94 fps, whatever the 120 stored frames say
    assert screen.num_frames == len(F.retime_map(_times(variable), Fraction(60000, 1001)))
    assert screen.num_frames / screen.fps == pytest.approx(0.5 + 2.4 + 1.2 + 1.5, abs=0.05)
    header = probe_media(variable, ProbeConfig(count_frames="header"))  # timing from packets, same answer
    assert header.vfr and header.num_frames == screen.num_frames
    with pytest.raises(Exception, match="vfr: retime") as info:
        probe_media(variable, ProbeConfig(vfr="quarantine"))
    assert info.value.reason == REASON_VFR and "median" in info.value.detail
    metadata, quarantine = _probed([jittered, variable], vfr="quarantine")
    assert metadata["path"].tolist() == [str(jittered)] and quarantine["reason"].tolist() == [REASON_VFR]


def _times(path):
    import av

    with av.open(str(path)) as container:
        return [t for _, _, t in F.decode_timed(container)]


# ------------------------------------------------------------------------------- scenes and cutting
def test_jittered_phone_clip_is_cut_exactly_at_its_shots(vfr_files, tmp_path):
    jittered, _ = vfr_files
    metadata, _ = _probed([jittered])
    config = _config(tmp_path)
    scenes, dropped, _ = run_scenes(metadata, config)
    assert cut_frames([Scene(0, s, e, 30.0) for s, e in zip(scenes["frame_start"], scenes["frame_end"])]) == CUTS
    clips, cut_dropped, _ = run_clips(metadata, scenes, config)
    assert dropped.empty and cut_dropped.empty and len(clips) == 4
    for shot, (path, n) in enumerate(zip(clips["path"], clips["num_frames"], strict=True)):
        shots, _ = _clip_shots(path)
        assert shots == [shot] * n  # no frame of the previous or next shot


def test_strongly_variable_clip_is_retimed_and_every_clip_survives(vfr_files, tmp_path):
    _, variable = vfr_files
    metadata, _ = _probed([variable])
    assert metadata["vfr"].item()
    config = _config(tmp_path)
    scenes, _, _ = run_scenes(metadata, config)
    clips, cut_dropped, _ = run_clips(metadata, scenes, config)
    assert cut_dropped.empty and len(clips) == 4
    assert scenes["frame_end"].max() == metadata["num_frames"].item()
    for shot, path in enumerate(clips["path"]):
        shots, fps = _clip_shots(path)
        assert set(shots) == {shot} and fps == pytest.approx(59.94, abs=0.01)
    # each clip lasts as long as its shot was on screen (constant rate: frames / fps)
    seconds = (clips["num_frames"] / clips["fps"]).tolist()
    assert seconds == pytest.approx([0.5, 2.4, 1.2, 1.5], abs=2 / 59.94)


def test_scene_detection_needs_a_rate_for_a_variable_source(vfr_files):
    _, variable = vfr_files
    with pytest.raises(Exception, match="needs the fps"):
        detect_scenes(variable, SceneDetectionConfig(min_scene_len=6), vfr=True)


# --------------------------------------------------------------------------------------- odd inputs
def test_png_named_mp4_is_quarantined_not_a_one_frame_video(tmp_path):
    Image.fromarray(np.full((48, 64, 3), 90, np.uint8)).save(tmp_path / "still.png")
    (tmp_path / "holiday.mp4").write_bytes((tmp_path / "still.png").read_bytes())
    metadata, quarantine = _probed([tmp_path / "holiday.mp4", tmp_path / "still.png"])
    assert metadata["path"].tolist() == [str(tmp_path / "still.png")]
    row = quarantine.iloc[0]
    assert row["reason"] == REASON_IMAGE_AS_VIDEO and "PNG" in row["detail"] and ".mp4" in row["detail"]


def test_same_name_in_three_containers_gives_distinct_clip_ids(tmp_path):
    frames = shot_sequence([20, 20])
    for suffix in ("mkv", "mov", "webm"):
        write_timed(tmp_path / f"clip.{suffix}", frames[:, :, :, :] // (2 if suffix == "mov" else 1),
                    np.arange(len(frames)) / 20.0, codec="libvpx-vp9" if suffix == "webm" else "libx264")
    metadata, quarantine = _probed([tmp_path / f"clip.{s}" for s in ("mkv", "mov", "webm")])
    assert quarantine.empty
    config = _config(tmp_path)
    scenes, _, _ = run_scenes(metadata, config)
    clips, _, _ = run_clips(metadata, scenes, config)
    assert len(clips) == 6 and clips["clip_id"].is_unique and clips["path"].is_unique
    assert {c.split("-")[1] for c in clips["clip_id"]} == {"mkv", "mov", "webm"}


def test_repeated_path_and_repeated_content_are_curated_once(tmp_path):
    frames = shot_sequence([20, 20])
    write_video(tmp_path / "a.mp4", frames, 20.0)
    (tmp_path / "copy").mkdir()
    (tmp_path / "copy" / "a.mp4").write_bytes((tmp_path / "a.mp4").read_bytes())
    metadata, _ = _probed([tmp_path / "a.mp4", tmp_path / "copy" / "a.mp4"])
    twice = pd.concat([metadata, metadata.iloc[[0]]], ignore_index=True)
    scenes, dropped, _ = run_scenes(twice, _config(tmp_path))
    assert set(scenes["source_path"]) == {str(tmp_path / "a.mp4")}
    reasons = dropped["reason"].tolist()
    assert any(r.startswith("same content as") for r in reasons)
    assert any(r.startswith("duplicate path") for r in reasons) and len(reasons) == 2


def test_curation_rechecks_its_input_table(tmp_path):
    frames = shot_sequence([20, 20])
    write_video(tmp_path / "a.mp4", frames, 20.0)
    write_video(tmp_path / "b.mp4", frames[::-1], 20.0)
    metadata, _ = _probed([tmp_path / "a.mp4", tmp_path / "b.mp4"])
    check_input_table(metadata, str(tmp_path / "contracts"))  # a clean table passes
    broken = metadata.copy()
    broken.loc[1, "fps"] = -25.0
    broken.loc[1, "duration"] = broken.loc[1, "num_frames"] / -25.0
    with pytest.raises(ContractError, match="fps") as info:
        check_input_table(broken, str(tmp_path / "contracts"))
    assert str(tmp_path / "b.mp4") in str(info.value)
    repeated = pd.concat([metadata, metadata.iloc[[0]]], ignore_index=True)
    with pytest.raises(ContractError, match="unique") as info:
        check_input_table(repeated, str(tmp_path / "contracts"))
    assert (tmp_path / "contracts" / "curation.raw_metadata_input.md").is_file()


def test_a_killed_cut_leaves_no_clip_under_a_real_name(tmp_path):
    frames = shot_sequence([20, 20])
    write_video(tmp_path / "a.mp4", frames, 20.0)
    out = tmp_path / "clips"
    out.mkdir()
    # what a kill -9 during an encode leaves: a header-only file under the temporary name
    stale = out / ".a-mp4-s000-p00.partial-4242.mp4"
    stale.write_bytes(b"\x00\x00\x00\x18ftypisom" + b"\x00" * 36)
    config = ClipConfig(min_seconds=0.5, max_seconds=2.0, shorter_side=None)
    plans, _ = plan_clips([Scene(0, 0, 20, 20.0), Scene(1, 20, 40, 20.0)], config)
    rows, failed = cut_clips(tmp_path / "a.mp4", plans, out, config)
    assert not failed and not stale.exists()
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{r['clip_id']}.mp4" for r in rows)
    for row in rows:
        assert len(read_video(row["path"])[0]) == row["num_frames"]
    remove_partials(out)  # nothing else to remove
    assert len(list(out.iterdir())) == 2
