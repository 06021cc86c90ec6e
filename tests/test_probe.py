"""Probing with PyAV: values on generated files, and every kind of bad file quarantined with its reason."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pandas as pd
import pytest

from opensora_mlops.config import ConfigError
from opensora_mlops.curation import probe as P
from opensora_mlops.curation.synthetic import generate_corpus
from opensora_mlops.data.video_io import write_video

CORPUS = {
    "seed": 5,
    "num_videos": 2,
    "sizes": [[64, 112], [112, 64]],
    "duration_seconds": [1.0, 1.5],
    "shots_per_video": [1, 2],
    "min_shot_seconds": 0.5,
    "num_large": 0,
    "defect_duration_seconds": [0.5, 0.5],
    "defects": {"zero_bytes": 1, "truncated": 1, "not_video": 1, "static": 1},
    "num_images": 2,
}


def _write_raw(path, frames, rate, codec="libx264", options=None):
    """Encode with an arbitrary frame rate (write_video refuses absurd ones) and muxer options."""
    with av.open(str(path), mode="w", options=options or {}) as container:
        stream = container.add_stream(codec, rate=rate)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("probe_corpus")
    return root, generate_corpus(root, CORPUS, progress=False)


def test_probe_matches_ground_truth(corpus):
    root, videos = corpus
    candidates = pd.DataFrame({"path": [str(root / v.path) for v in videos], "source": "synthetic"})
    metadata, quarantine = P.probe_table(candidates, progress=False)
    assert len(metadata) + len(quarantine) == len(videos)  # nothing dropped
    by_path = metadata.set_index("path")
    for v in videos:
        path = str(root / v.path)
        if v.kind in ("zero_bytes", "truncated", "not_video"):
            assert path in set(quarantine["path"])
            continue
        row = by_path.loc[path]
        assert (row.height, row.width, row.num_frames) == (v.height, v.width, v.num_frames)
        assert row.aspect_ratio == pytest.approx(v.height / v.width)
        assert row.resolution == v.height * v.width
        if v.kind == "image":
            assert np.isnan(row.fps) and row.num_frames == 1
        else:
            assert row.fps == v.fps
            assert row.duration == pytest.approx(v.num_frames / v.fps)
    reasons = dict(zip(quarantine["path"].map(lambda p: p.rsplit("/", 1)[-1]), quarantine["reason"]))
    kinds = {v.path: v.kind for v in videos}
    assert {kinds[name]: reason for name, reason in reasons.items()} == {
        "zero_bytes": P.REASON_EMPTY,
        "truncated": P.REASON_TRUNCATED,
        "not_video": P.REASON_UNREADABLE,
    }
    assert (quarantine["stage"] == P.PROBE_STAGE).all()
    summary = P.summarize(metadata, quarantine)
    assert summary["accepted"] == len(metadata) and summary["quarantined"] == 3
    assert summary["accepted_images"] == 2
    assert summary["quarantined_by_reason"] == {P.REASON_EMPTY: 1, P.REASON_TRUNCATED: 1, P.REASON_UNREADABLE: 1}
    assert list(metadata.columns) == P.METADATA_COLUMNS
    assert metadata["num_frames"].dtype == "int64" and metadata["text"].isna().all()


def test_absurd_fps_and_dimensions(tmp_path):
    frames = np.zeros((3, 32, 32, 3), dtype=np.uint8)
    fast = tmp_path / "fast.mp4"
    _write_raw(fast, frames, rate=Fraction(1000))
    with pytest.raises(P.ProbeFailure) as info:
        P.probe_media(fast)
    assert info.value.reason == P.REASON_BAD_FPS and "1000" in info.value.detail
    # the same file passes when the limit allows it
    assert P.probe_media(fast, P.ProbeConfig(max_fps=2000)).fps == 1000

    huge = tmp_path / "huge.png"  # 9000 px wide: refused from the header, before decoding
    from PIL import Image

    Image.new("RGB", (9000, 20)).save(huge)
    with pytest.raises(P.ProbeFailure) as info:
        P.probe_media(huge)
    assert info.value.reason == P.REASON_BAD_DIMENSIONS and "20x9000" in info.value.detail

    tiny = tmp_path / "tiny.mp4"
    write_video(tiny, np.zeros((2, 8, 8, 3), dtype=np.uint8), fps=24)
    with pytest.raises(P.ProbeFailure) as info:
        P.probe_media(tiny)
    assert info.value.reason == P.REASON_BAD_DIMENSIONS and "8x8" in info.value.detail


def test_truncated_with_intact_header_is_caught_by_decoding(tmp_path):
    """Index at the front (faststart), data cut: the header promises frames the file does not hold."""
    frames = (np.random.default_rng(0).integers(0, 255, (40, 64, 64, 3))).astype(np.uint8)
    path = tmp_path / "clip.mp4"
    _write_raw(path, frames, rate=Fraction(25), options={"movflags": "faststart"})
    assert P.probe_media(path).num_frames == 40
    data = path.read_bytes()
    assert data[36:40] == b"moov"  # the index really is in front of the frames
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(P.ProbeFailure) as info:
        P.probe_media(cut)
    assert info.value.reason == P.REASON_TRUNCATED and "header says 40 frames" in info.value.detail
    # trusting the header instead would accept it with the promised count
    assert P.probe_media(cut, P.ProbeConfig(count_frames="header")).num_frames == 40


def test_missing_unsupported_and_broken_image(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    cases = {
        tmp_path / "absent.mp4": P.REASON_NOT_FOUND,
        tmp_path / "notes.txt": P.REASON_UNSUPPORTED,
        tmp_path / "broken.png": P.REASON_BAD_IMAGE,
    }
    for path, reason in cases.items():
        with pytest.raises(P.ProbeFailure) as info:
            P.probe_media(path)
        assert info.value.reason == reason, path


def test_header_mode_trusts_container_count(corpus):
    root, videos = corpus
    good = next(v for v in videos if v.kind == "good")
    info = P.probe_media(root / good.path, P.ProbeConfig(count_frames="header"))
    assert info.num_frames == good.num_frames


def test_probe_config_is_strict():
    with pytest.raises(ConfigError, match="max_fsp"):
        P.ProbeConfig.from_dict({"max_fsp": 10})
    with pytest.raises(ConfigError, match="count_frames"):
        P.ProbeConfig.from_dict({"count_frames": "guess"})


def test_parallel_probe_keeps_order(corpus):
    root, videos = corpus
    paths = [str(root / v.path) for v in videos if v.kind in ("good", "image", "static")]
    candidates = pd.DataFrame({"path": paths, "source": "synthetic", "text": "x"})
    metadata, quarantine = P.probe_table(candidates, {"num_workers": 2}, progress=False)
    assert list(metadata["path"]) == paths and quarantine.empty
    assert (metadata["text"] == "x").all()


# --------------------------------------------------------------------------------------------------
# User folder source (listing + captions CSV), probed end to end
# --------------------------------------------------------------------------------------------------


def test_user_folder_with_captions_csv(tmp_path):
    from opensora_mlops.curation import sources as S

    root = tmp_path / "footage"
    (root / "sub").mkdir(parents=True)
    frames = np.full((6, 48, 64, 3), 90, dtype=np.uint8)
    frames[:, 10:20, 10 + np.arange(6)[:, None]] = 250  # something moves (shape irrelevant here)
    for name in ("a.mp4", "sub/b.mkv", "c.mov", "d.mp4", "e.webm"):
        _write_raw(root / name, frames, Fraction(24), codec="libvpx-vp9" if name.endswith("webm") else "libx264")
    from PIL import Image

    Image.fromarray(frames[0]).save(root / "still.png")
    (root / "notes.txt").write_text("not media")
    (root / ".DS_Store").write_bytes(b"\x00")
    (tmp_path / "secret.mp4").write_bytes(b"outside")
    (root / "link.mp4").symlink_to(tmp_path / "secret.mp4")
    (root / "again.mp4").symlink_to(root / "d.mp4")  # a second name for a listed file
    rows = [
        b"path,text",
        b"a.mp4,a calm lake at dawn",
        b'sub/b.mkv,"a street, at night, with ""neon"" signs\nand rain"',
        "c.mov,caf\u00e9 terrace".encode("latin-1"),  # é as 0xe9: not UTF-8
        b"../secret.mp4,escaping the data root",
        b"missing.mp4,no such file",
        b"a.mp4,second caption for a",  # two captions for one file: which one? the file is held back
        b"still.png,a grey still",
        b"still.png,a grey still",  # the same row twice: merged
    ]
    (root / "captions.csv").write_bytes(b"\r\n".join(rows) + b"\r\n")

    candidates, quarantine, counts = S.list_folder({"root": str(root), "captions_csv": "captions.csv"})
    by_name = {p.rsplit("/", 1)[-1]: t for p, t in zip(candidates["path"], candidates["text"])}
    assert set(by_name) == {"b.mkv", "d.mp4", "e.webm", "still.png"}
    assert len(candidates) == 4  # still.png once, a.mp4 not at all
    assert by_name["b.mkv"] == 'a street, at night, with "neon" signs\nand rain'
    assert pd.isna(by_name["d.mp4"]) and by_name["still.png"] == "a grey still"
    assert (candidates["source"] == "folder").all()
    assert candidates["path"].map(lambda p: p.startswith(str(root.resolve()))).all()

    reasons = dict(zip(quarantine["path"].map(lambda p: p.rsplit("/", 1)[-1]), quarantine["reason"]))
    assert reasons["c.mov"] == S.REASON_BAD_ENCODING == "caption not valid UTF-8"
    assert reasons["secret.mp4"] == S.REASON_OUTSIDE_ROOT == "path outside data root"
    assert "../secret.mp4" in set(quarantine["path"])
    assert reasons["link.mp4"] == S.REASON_OUTSIDE_ROOT
    assert reasons["missing.mp4"] == S.REASON_CAPTION_FILE_MISSING
    assert reasons["notes.txt"] == S.REASON_UNSUPPORTED
    assert reasons["again.mp4"] == S.REASON_DUPLICATE_FILE
    conflict = quarantine[quarantine["reason"] == S.REASON_CONFLICTING_CAPTIONS]
    assert conflict["path"].map(lambda p: p.rsplit("/", 1)[-1]).tolist() == ["a.mp4"]  # quarantined once
    assert "lines 2, 7" in conflict["detail"].item()
    assert counts["duplicate_caption_rows"] == 1
    # no file is both accepted and quarantined
    assert not set(candidates["path"]) & set(quarantine["path"])
    bad_encoding = quarantine[quarantine["reason"] == S.REASON_BAD_ENCODING].iloc[0]
    assert "line 4" in bad_encoding["detail"] and "0xe9" in bad_encoding["detail"]
    assert counts["hidden_files_ignored"] == 1

    metadata, probe_quarantine = P.probe_table(candidates, progress=False)
    assert probe_quarantine.empty
    assert set(metadata["num_frames"]) == {6, 1}
    assert (metadata[metadata["num_frames"] == 6]["fps"] == 24).all()
    assert set(zip(metadata["height"], metadata["width"])) == {(48, 64)}


def test_captions_csv_header_is_checked(tmp_path):
    from opensora_mlops.curation import sources as S

    (tmp_path / "captions.csv").write_text("file,caption\na.mp4,x\n")
    with pytest.raises(ConfigError, match="'path' and 'text'"):
        S.read_captions_csv(tmp_path / "captions.csv", tmp_path)
    with pytest.raises(ConfigError, match="not a directory"):
        S.list_folder({"root": str(tmp_path / "nope")})
    with pytest.raises(ConfigError, match="captions_cvs"):
        S.list_folder({"root": str(tmp_path), "captions_cvs": "x.csv"})


def test_folder_without_any_caption_stops_ingestion_with_the_fix(tmp_path):
    from opensora_mlops.curation import sources as S
    from opensora_mlops.curation.captions import CaptionSourceError

    frames = np.full((6, 48, 64, 3), 90, dtype=np.uint8)
    for name in ("a.mp4", "b.mov"):
        _write_raw(tmp_path / name, frames, Fraction(24))
    candidates, _, _ = S.list_folder({"root": str(tmp_path)})
    with pytest.raises(CaptionSourceError) as info:
        S.check_caption_strategy(candidates, {}, str(tmp_path))
    message = str(info.value)
    assert "none of the 2 media files" in message and str(tmp_path) in message
    for fix in ("ingestion.folder.captions_csv", "curation.captions.source: vlm", "vlm_path", "missing_text: filename"):
        assert fix in message
    # a named fallback or the VLM is a strategy: no refusal, the uncaptioned count comes back
    assert S.check_caption_strategy(candidates, {"missing_text": "filename"}, str(tmp_path)) == 2
    (tmp_path / "vlm").mkdir()
    assert S.check_caption_strategy(candidates, {"source": "vlm", "vlm_path": str(tmp_path / "vlm")}, "x") == 2
    # one caption is enough to go on (the other clip is dropped, counted, by curation)
    (tmp_path / "captions.csv").write_text("path,text\na.mp4,a grey wall\n")
    captioned, _, _ = S.list_folder({"root": str(tmp_path), "captions_csv": "captions.csv"})
    assert S.check_caption_strategy(captioned, {}, str(tmp_path)) == 1
