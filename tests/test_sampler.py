"""Distributed, resumable bucket batch sampler."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from opensora_mlops.data.buckets import BucketConfig, assign_buckets
from opensora_mlops.data.sampler import EmptyEpochError, SampleKey, VariableVideoBatchSampler

CONFIG = BucketConfig({"144p": {1: [1.0, 4], 8: [1.0, 3], 16: [0.5, 2]}, "240p": {1: [0.5, 3], 8: [0.8, 2]}})


def make_table(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "num_frames": rng.choice([1, 12, 20, 40], n),
            "height": rng.choice([144, 240, 360, 720], n),
            "width": rng.choice([192, 256, 426, 1280], n),
        }
    )


def run_epoch(table, world, epoch=0, seed=7, **kwargs):
    out = []
    for rank in range(world):
        sampler = VariableVideoBatchSampler(table, CONFIG, num_replicas=world, rank=rank, seed=seed, **kwargs)
        sampler.set_epoch(epoch)
        out.append(list(sampler))
    return out


@settings(max_examples=25, deadline=None)
@given(n=st.integers(40, 300), world=st.integers(1, 4), epoch=st.integers(0, 5), data_seed=st.integers(0, 99))
def test_epoch_covers_each_kept_sample_once_across_ranks(n, world, epoch, data_seed):
    table = make_table(n, data_seed)
    try:
        per_rank = run_epoch(table, world, epoch=epoch, frame_interval=2)
    except EmptyEpochError:
        return
    assigned = assign_buckets(table, CONFIG, frame_interval=2, seed=7, epoch=epoch)
    # every rank runs the same number of steps
    assert len({len(batches) for batches in per_rank}) == 1
    rows = [key.row for batches in per_rank for batch in batches for key in batch]
    assert len(rows) == len(set(rows)), "a sample was scheduled twice"
    per_bucket_batches: dict[str, int] = {}
    for batches in per_rank:
        for batch in batches:
            bucket = {key.bucket_id for key in batch}
            assert len(bucket) == 1, "a batch mixes buckets"
            label = bucket.pop()
            res, frames, _ = label.split("/")
            assert len(batch) == CONFIG.spec(res, int(frames)).batch_size
            per_bucket_batches[label] = per_bucket_batches.get(label, 0) + 1
            for key in batch:
                assert assigned["bucket_id"].iloc[key.row] == label
                assert (key.num_frames, key.height, key.width) == (
                    assigned["bucket_num_frames"].iloc[key.row],
                    assigned["bucket_height"].iloc[key.row],
                    assigned["bucket_width"].iloc[key.row],
                )
    # only remainders (< one batch per bucket) and the world-size trim (< one step) are left out
    kept = assigned[assigned["keep"]]
    full = {b: len(g) // int(g["batch_size"].iloc[0]) for b, g in kept.groupby("bucket_id")}
    total_full = sum(full.values())
    assert sum(per_bucket_batches.values()) == total_full - total_full % world
    assert all(per_bucket_batches.get(b, 0) <= k for b, k in full.items())


def test_len_and_determinism_and_reshuffle():
    table = make_table(400)
    first = run_epoch(table, 2, epoch=0)
    assert first == run_epoch(table, 2, epoch=0)
    assert first != run_epoch(table, 2, epoch=1)
    sampler = VariableVideoBatchSampler(table, CONFIG, num_replicas=2, rank=1, seed=7)
    assert len(sampler) == len(first[1]) == sampler.num_remaining()
    assert all(isinstance(k, SampleKey) for batch in first[0] for k in batch)


def test_unshuffled_order_is_sorted_within_bucket():
    sampler = VariableVideoBatchSampler(make_table(200), CONFIG, shuffle=False, seed=1)
    for batch in sampler:
        rows = [k.row for k in batch]
        assert rows == sorted(rows)


@pytest.mark.parametrize("world", [1, 3])
def test_resume_mid_epoch_yields_the_remaining_batches(world):
    table = make_table(500)
    for rank in range(world):
        sampler = VariableVideoBatchSampler(table, CONFIG, num_replicas=world, rank=rank, seed=11)
        sampler.set_epoch(2)
        whole = list(sampler)
        sampler.set_epoch(3)
        sampler.set_epoch(2)
        iterator = iter(sampler)
        head = [next(iterator) for _ in range(5)]
        assert head == whole[:5]
        state = sampler.state_dict()
        assert state == {"seed": 11, "epoch": 2, "consumed_batches": 5 * world}
        resumed = VariableVideoBatchSampler(table, CONFIG, num_replicas=world, rank=rank, seed=11)
        resumed.load_state_dict(state)
        assert resumed.num_remaining() == len(whole) - 5
        assert list(resumed) == whole[5:]
        # a prefetching loader: the caller says how many steps were trained
        again = VariableVideoBatchSampler(table, CONFIG, num_replicas=world, rank=rank, seed=11)
        again.load_state_dict(sampler.state_dict(num_steps=3))
        assert list(again) == whole[3:]
        # after a full pass the next epoch starts from its beginning
        assert len(list(resumed)) == len(whole)


def test_load_state_checks_keys_and_seed():
    sampler = VariableVideoBatchSampler(make_table(100), CONFIG, seed=1)
    with pytest.raises(ValueError, match="seed"):
        sampler.load_state_dict({"seed": 2, "epoch": 0, "consumed_batches": 0})
    with pytest.raises(ValueError, match="unknown key"):
        sampler.load_state_dict({"seed": 1, "epoch": 0, "consumed_batches": 0, "last_micro_batch_access_index": 0})


def test_too_little_data_is_a_clear_error():
    table = pd.DataFrame({"num_frames": [20, 20], "height": [144, 144], "width": [256, 256]})
    with pytest.raises(EmptyEpochError, match=r"144p/8/0.56: 2 sample\(s\), batch size 3"):
        VariableVideoBatchSampler(table, CONFIG, frame_interval=2)
    tiny = pd.DataFrame({"num_frames": [2], "height": [10], "width": [10]})
    with pytest.raises(EmptyEpochError, match="every sample was dropped"):
        VariableVideoBatchSampler(tiny, CONFIG)
    # enough for one batch, not for one per rank
    three = pd.DataFrame({"num_frames": [20] * 3, "height": [144] * 3, "width": [256] * 3})
    assert len(VariableVideoBatchSampler(three, CONFIG, frame_interval=2)) == 1
    with pytest.raises(EmptyEpochError, match="for 2 rank"):
        VariableVideoBatchSampler(three, CONFIG, frame_interval=2, num_replicas=2)


def test_stored_assignment_is_used_without_reassignment():
    table = assign_buckets(make_table(300), CONFIG, frame_interval=1, seed=5, epoch=0)
    sampler = VariableVideoBatchSampler(table, CONFIG, seed=5, reassign_each_epoch=False)
    for epoch in (0, 4):
        sampler.set_epoch(epoch)
        for batch in sampler:
            for key in batch:
                assert table["bucket_id"].iloc[key.row] == key.bucket_id
    with pytest.raises(ValueError, match="bucket_id column"):
        VariableVideoBatchSampler(make_table(10), CONFIG, reassign_each_epoch=False)
