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


def _check_epoch(table, per_rank, world, epoch, drop_last):
    """Invariants of one epoch's batches over all ranks; returns (scheduled rows, full batches per bucket)."""
    assigned = assign_buckets(table, CONFIG, frame_interval=2, seed=7, epoch=epoch)
    # every rank runs the same number of steps
    assert len({len(batches) for batches in per_rank}) == 1
    rows = [key.row for batches in per_rank for batch in batches for key in batch]
    assert len(rows) == len(set(rows)), "a sample was scheduled twice"
    for batches in per_rank:
        for batch in batches:
            bucket = {key.bucket_id for key in batch}
            assert len(bucket) == 1, "a batch mixes buckets"
            res, frames, _ = bucket.pop().split("/")
            batch_size = CONFIG.spec(res, int(frames)).batch_size
            assert 1 <= len(batch) <= batch_size
            if drop_last:
                assert len(batch) == batch_size
            for key in batch:
                assert assigned["bucket_id"].iloc[key.row] == key.bucket_id
                assert (key.num_frames, key.height, key.width) == (
                    assigned["bucket_num_frames"].iloc[key.row],
                    assigned["bucket_height"].iloc[key.row],
                    assigned["bucket_width"].iloc[key.row],
                )
    return set(rows), assigned[assigned["keep"]]


@settings(max_examples=25, deadline=None)
@given(n=st.integers(40, 300), world=st.integers(1, 4), epoch=st.integers(0, 5), data_seed=st.integers(0, 99))
def test_every_bucketed_sample_is_trained_once_per_epoch(n, world, epoch, data_seed):
    table = make_table(n, data_seed)
    per_rank = run_epoch(table, world, epoch=epoch, frame_interval=2)
    rows, kept = _check_epoch(table, per_rank, world, epoch, drop_last=False)
    # nothing dropped: partial last batches, and splits instead of a world-size trim
    assert rows == set(kept.index)
    sampler = VariableVideoBatchSampler(table, CONFIG, num_replicas=world, seed=7, frame_interval=2)
    sampler.set_epoch(epoch)
    assert sampler.dropped_rows == 0 and sampler.dropped_by_bucket == {}
    assert sampler.bucket_counts() == kept["bucket_id"].value_counts().to_dict()
    # at most world - 1 batches more than ceil(rows / batch size) per bucket (the splits)
    natural = sum(-(-len(g) // int(g["batch_size"].iloc[0])) for _, g in kept.groupby("bucket_id"))
    assert natural <= world * len(per_rank[0]) < natural + world


@settings(max_examples=25, deadline=None)
@given(n=st.integers(40, 300), world=st.integers(1, 4), epoch=st.integers(0, 5), data_seed=st.integers(0, 99))
def test_drop_last_is_the_v11_plan_and_counts_what_it_drops(n, world, epoch, data_seed):
    table = make_table(n, data_seed)
    try:
        per_rank = run_epoch(table, world, epoch=epoch, frame_interval=2, drop_last=True)
    except EmptyEpochError:
        return
    rows, kept = _check_epoch(table, per_rank, world, epoch, drop_last=True)
    # only remainders (< one batch per bucket) and the world-size trim (< one step) are left out
    full = {b: len(g) // int(g["batch_size"].iloc[0]) for b, g in kept.groupby("bucket_id")}
    total_full = sum(full.values())
    assert sum(len(batches) for batches in per_rank) == total_full - total_full % world
    sampler = VariableVideoBatchSampler(table, CONFIG, num_replicas=world, seed=7, frame_interval=2, drop_last=True)
    sampler.set_epoch(epoch)
    # every bucketed row is either scheduled or counted as dropped, per bucket
    assert sampler.dropped_rows == len(kept) - len(rows)
    left_out = kept.loc[sorted(set(kept.index) - rows), "bucket_id"].value_counts().to_dict()
    assert sampler.dropped_by_bucket == left_out


def test_small_buckets_are_trained_not_dropped(caplog):
    """The case of issue 11: a 3-clip bucket with batch size 3+ and 2 images with batch size 4 were never
    trained on (1.1 kept rows // batch_size batches per bucket)."""
    table = pd.DataFrame({
        "num_frames": [20] * 13 + [20] * 2 + [1] * 2,
        "height": [144] * 13 + [256] * 2 + [144] * 2,
        "width": [256] * 13 + [144] * 2 + [256] * 2,
    })  # fmt: skip
    with caplog.at_level("WARNING", logger="opensora_mlops.data.sampler"):
        sampler = VariableVideoBatchSampler(table, CONFIG, frame_interval=2, seed=3)
    batches = list(sampler)
    assert sorted(k.row for b in batches for k in b) == list(range(17))
    assert sorted(len(b) for b in batches) == [1, 2, 2, 3, 3, 3, 3]  # 13 = 3+3+3+3+1, 2, 2
    assert sampler.dropped_rows == 0 and not caplog.records
    v11 = VariableVideoBatchSampler(table, CONFIG, frame_interval=2, seed=3, drop_last=True)
    assert sum(len(b) for b in v11) == 12
    assert v11.dropped_by_bucket == {"144p/8/0.56": 1, "144p/8/1.78": 2, "144p/1/0.56": 2}
    assert v11.dropped_rows == 5
    assert "5 of 17 bucketed sample(s) are not trained on" in caplog.text
    assert "144p/1/0.56: 2 of 2" in caplog.text


def test_world_size_is_met_by_splitting_the_largest_batches(caplog):
    # one bucket, 7 rows, batch size 3: batches 3, 3, 1; two ranks need an even count
    table = pd.DataFrame({"num_frames": [20] * 7, "height": [144] * 7, "width": [256] * 7})
    per_rank = run_epoch(table, 2, frame_interval=2, shuffle=False)
    assert [[len(b) for b in batches] for batches in per_rank] == [[2, 3], [1, 1]]
    assert sorted(k.row for batches in per_rank for b in batches for k in b) == list(range(7))
    # four ranks: 3, 3, 1 -> one split -> 4 batches, still nothing dropped
    four = [VariableVideoBatchSampler(table, CONFIG, frame_interval=2, num_replicas=4, rank=r, seed=1)
            for r in range(4)]
    assert [len(s) for s in four] == [1, 1, 1, 1] and four[0].dropped_rows == 0
    assert sorted(k.row for s in four for b in s for k in b) == list(range(7))
    # five buckets, 6 rows, four ranks: 8 batches would need 8 rows, so one batch of one row is dropped
    sizes = [(144, 256), (144, 256), (256, 144), (192, 192), (221, 165), (166, 221)]
    spread = pd.DataFrame({"num_frames": [20] * 6, "height": [h for h, _ in sizes], "width": [w for _, w in sizes]})
    with caplog.at_level("WARNING", logger="opensora_mlops.data.sampler"):
        ranks = [VariableVideoBatchSampler(spread, CONFIG, frame_interval=2, num_replicas=4, rank=r, seed=1)
                 for r in range(4)]
    assert "1 of 6 bucketed sample(s) are not trained on" in caplog.text and "4 rank(s)" in caplog.text
    assert [len(s) for s in ranks] == [1, 1, 1, 1]
    scheduled = sorted(k.row for s in ranks for b in s for k in b)
    assert len(scheduled) == 5 and {0, 1} <= set(scheduled)  # the 2-row batch is kept
    assert ranks[0].dropped_rows == 1 and sum(ranks[0].dropped_by_bucket.values()) == 1
    with pytest.raises(EmptyEpochError, match="3 row"):
        VariableVideoBatchSampler(table.iloc[:3], CONFIG, frame_interval=2, num_replicas=4)


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
    two = pd.DataFrame({"num_frames": [20, 20], "height": [144, 144], "width": [256, 256]})
    assert [len(b) for b in VariableVideoBatchSampler(two, CONFIG, frame_interval=2)] == [2]  # a partial batch
    with pytest.raises(EmptyEpochError, match=r"144p/8/0.56: 2 sample\(s\), batch size 3"):
        VariableVideoBatchSampler(two, CONFIG, frame_interval=2, drop_last=True)
    tiny = pd.DataFrame({"num_frames": [2], "height": [10], "width": [10]})
    for drop_last in (False, True):
        with pytest.raises(EmptyEpochError, match="every sample was dropped"):
            VariableVideoBatchSampler(tiny, CONFIG, drop_last=drop_last)
    # enough for one batch, not for one per rank
    three = pd.DataFrame({"num_frames": [20] * 3, "height": [144] * 3, "width": [256] * 3})
    assert len(VariableVideoBatchSampler(three, CONFIG, frame_interval=2, drop_last=True)) == 1
    with pytest.raises(EmptyEpochError, match="for 2 rank"):
        VariableVideoBatchSampler(three, CONFIG, frame_interval=2, num_replicas=2, drop_last=True)
    assert len(VariableVideoBatchSampler(three, CONFIG, frame_interval=2, num_replicas=2)) == 1  # 2 + 1


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
