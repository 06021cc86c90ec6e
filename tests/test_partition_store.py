"""Curation partitions through fsspec: a folder, a ``file://`` URL and an object store (fsspec's
in-process ``memory://`` filesystem standing in for ``s3://``) hold the same content-addressed
partitions and are reused the same way."""

from __future__ import annotations

import uuid
from dataclasses import replace

import fsspec
import pandas as pd
import pytest

from opensora_mlops.curation.partitions import PartitionStore
from opensora_mlops.curation.synthetic import ShotSpec
from test_curation_pipeline import _config, _curate, _video


@pytest.fixture
def raw(tmp_path):
    a = _video(tmp_path / "src" / "a.mp4", [(ShotSpec("red", "circle", "navy", "right", "quickly"), 24),
                                            (ShotSpec("yellow", "square", "gray", "up", "quickly"), 30)])
    b = _video(tmp_path / "src" / "b.mp4", [(ShotSpec("cyan", "triangle", "maroon", "left", "slowly"), 30)])
    return pd.DataFrame([a, b])


@pytest.fixture
def bucket():
    """A fresh prefix on fsspec's memory filesystem (an object store without a server), removed after."""
    url = f"memory://curation-{uuid.uuid4().hex[:8]}"
    yield url
    fs = fsspec.filesystem("memory")
    if fs.exists(url):
        fs.rm(url, recursive=True)


def _with_root(config, root):
    return replace(config, partitions=replace(config.partitions, root=root))


def test_object_store_holds_the_same_partitions_as_a_folder(tmp_path, raw, bucket):
    folder = _config(tmp_path)
    _, in_folder, _, _ = _curate(raw, folder)
    in_store = _with_root(_config(tmp_path / "store"), f"{bucket}/parts")
    _, from_store, _, steps = _curate(raw, in_store)
    assert [(s.computed, s.reused) for s in steps] == [(2, 0), (2, 0), (2, 0)]
    drop = ["path"]
    pd.testing.assert_frame_equal(from_store.drop(columns=drop), in_folder.drop(columns=drop), check_exact=True)
    # same names (content-addressed keys) in both, nothing half-written left behind
    for step in ("scenes", "clips", "scores"):
        assert PartitionStore(f"{bucket}/parts", step).names() == PartitionStore(folder.partitions.root, step).names()
    objects = fsspec.filesystem("memory").find(bucket)
    assert objects and all(o.endswith(".parquet") for o in objects)
    # a rerun reads every partition back from the store
    _, again, _, steps = _curate(raw, in_store)
    assert [(s.computed, s.reused) for s in steps] == [(0, 2), (0, 2), (0, 2)]
    pd.testing.assert_frame_equal(again, from_store)


def test_a_folder_and_its_file_url_are_one_store(tmp_path, raw):
    config = _config(tmp_path)
    _, first, _, _ = _curate(raw, config)
    as_url = _with_root(config, f"file://{tmp_path / 'parts'}")
    _, again, _, steps = _curate(raw, as_url)
    assert [(s.computed, s.reused) for s in steps] == [(0, 2), (0, 2), (0, 2)]
    pd.testing.assert_frame_equal(again, first)


def test_store_roundtrip_and_done_marker(bucket):
    store = PartitionStore(bucket, "scores")
    assert store.load("v-1") is None and store.names() == []
    kept = pd.DataFrame({"clip_id": ["a", "b"], "aes": [1.5, 2.0]})
    dropped = pd.DataFrame({"path": ["c"], "reason": ["unreadable"]})
    store.save("v-1", kept, dropped)
    loaded = store.load("v-1")
    pd.testing.assert_frame_equal(loaded[0], kept)
    pd.testing.assert_frame_equal(loaded[1], dropped)
    assert store.names() == ["v-1"]
    # kept rows without the dropped file (an upload cut short) is not a finished partition
    with fsspec.open(f"{bucket}/scores/v-2.parquet", "wb") as fh:
        kept.to_parquet(fh)
    assert store.load("v-2") is None and store.names() == ["v-1"]
