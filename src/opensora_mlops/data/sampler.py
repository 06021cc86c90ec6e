"""Distributed, resumable batch sampler over variable-size buckets (1.1's VariableVideoBatchSampler).

Every epoch the samples are (re)assigned to buckets with the epoch's draws, each bucket's samples are
shuffled and cut into batches of the bucket's batch size, the last one partial, the list of bucket
accesses (one per batch) is shuffled globally, and access ``i·W + rank`` goes to ``rank``. All ranks
compute the same plan from (seed, epoch), so no communication is needed.

Every sample a bucket holds is trained on once per epoch. 1.1 dropped each bucket's remainder (fewer
than one batch) and then trimmed the accesses to a multiple of the world size W, silently: a 3-clip
bucket with batch size 4 was never trained on. Here, when the batch count is not a multiple of W,
the largest batches are split in two until it is (so every rank runs the same number of steps without
losing rows); only when there are fewer rows than that needs are the smallest batches dropped.
``drop_last=True`` restores 1.1's plan (full batches only, then the trim). Whatever a plan leaves out
is counted per bucket (:attr:`VariableVideoBatchSampler.dropped_by_bucket`, ``dropped_rows``) and
logged as a warning.

Each yielded batch is a list of :class:`SampleKey` — the table row plus the bucket's (T, H, W) — which
:class:`opensora_mlops.data.dataset.VideoBucketDataset` takes as its index.

A stage whose data cannot form a single batch raises :class:`EmptyEpochError` naming the buckets and
their counts (1.1 silently ran an empty epoch; fix #4).
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import torch

from opensora_mlops.config import check_keys
from opensora_mlops.data.buckets import BucketConfig, assign_arrays

logger = logging.getLogger(__name__)


class SampleKey(NamedTuple):
    """What the sampler yields per sample and the dataset takes as index."""

    row: int
    num_frames: int
    height: int
    width: int
    bucket_id: str


class EmptyEpochError(ValueError):
    """The data of a stage cannot form a single batch."""


class EpochPlan(NamedTuple):
    """One epoch's schedule: ``accesses[i]`` is the bucket of global batch ``i`` and
    ``batches[i]`` its rows; ``dropped`` counts, per bucket, the rows the bucket held that no batch
    of the epoch takes (empty unless ``drop_last`` or too few rows for the world size)."""

    bucket_ids: list[str]
    accesses: list[str]
    batches: list[np.ndarray]
    sizes: dict[str, tuple[int, int, int]]  # bucket_id -> (T, H, W)
    dropped: dict[str, int]


class VariableVideoBatchSampler:
    """Batch sampler for a bucket table (any table with ``num_frames``, ``height``, ``width``).

    Args:
        table: sample metadata, one row per sample (row positions are the sample indices).
        bucket_config: the stage's buckets.
        frame_interval: temporal stride of the stage.
        num_replicas, rank: data-parallel world size and this process's rank (default: from the
            initialised ``torch.distributed`` process group, else 1 and 0).
        shuffle: shuffle within buckets and across bucket accesses (off: deterministic order).
        seed: base seed; draws and shuffles depend on (seed, epoch) only.
        v11_compat: assign buckets exactly as 1.1 (see :mod:`opensora_mlops.data.buckets`).
        reassign_each_epoch: 1.1 redraws buckets every epoch; ``False`` uses the table's stored
            ``bucket_id`` column (as written by the bucketing pipeline) in every epoch.
        drop_last: 1.1's plan: only full batches, and the accesses trimmed to a multiple of the
            world size (dropped rows counted and logged). Default: partial last batches, nothing
            dropped while there are at least as many rows as batches needed.
    """

    def __init__(
        self,
        table: pd.DataFrame,
        bucket_config: BucketConfig,
        *,
        frame_interval: int = 1,
        num_replicas: int | None = None,
        rank: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        v11_compat: bool = False,
        reassign_each_epoch: bool = True,
        drop_last: bool = False,
    ) -> None:
        if num_replicas is None or rank is None:
            # like torch's DistributedSampler: the process group's size and rank, else one process
            initialised = torch.distributed.is_available() and torch.distributed.is_initialized()
            if num_replicas is None:
                num_replicas = torch.distributed.get_world_size() if initialised else 1
            if rank is None:
                rank = torch.distributed.get_rank() if initialised else 0
        if num_replicas < 1:
            raise ValueError(f"num_replicas must be >= 1, got {num_replicas}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, {num_replicas}), got {rank}")
        if not reassign_each_epoch and "bucket_id" not in table.columns:
            raise ValueError("reassign_each_epoch=False needs a table with a bucket_id column (a bucket table)")
        self.table = table
        self.config = bucket_config
        self.frame_interval = int(frame_interval)
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.v11_compat = bool(v11_compat)
        self.reassign_each_epoch = bool(reassign_each_epoch)
        self.drop_last = bool(drop_last)
        self.epoch = 0
        # global batches (all ranks together) already consumed in the current epoch
        self.consumed_batches = 0
        self._plan: EpochPlan | None = None
        self._plan_epoch = -1
        self._frames = table["num_frames"].to_numpy()
        self._heights = table["height"].to_numpy()
        self._widths = table["width"].to_numpy()
        self.plan()  # fail early (EmptyEpochError, bad sizes)

    # ------------------------------------------------------------------ planning
    def _bucket_of_rows(self) -> tuple[np.ndarray, list[str], dict[str, tuple[int, int, int]], dict[str, int]]:
        """(bucket code per row, -1 = dropped), code -> bucket_id, sizes and batch sizes per bucket_id."""
        if self.reassign_each_epoch:
            a = assign_arrays(
                self._frames, self._heights, self._widths, self.config,
                frame_interval=self.frame_interval, seed=self.seed, epoch=self.epoch,
                v11_compat=self.v11_compat,
            )  # fmt: skip
            kept = a.bucket >= 0
            n_ratio = max(len(t.ratios) for t in self.config.tables.values())
            code = np.where(kept, a.bucket * n_ratio + a.ratio, -1)
            labels, sizes, batch = [], {}, {}
            uniq = np.unique(code[kept])
            remap = np.full(len(self.config.specs) * n_ratio, -1, dtype=np.int64)
            for j, c in enumerate(uniq):
                spec = self.config.specs[c // n_ratio]
                table = self.config.tables[spec.resolution]
                key = table.ratio_keys[c % n_ratio]
                label = f"{spec.resolution}/{spec.num_frames}/{key}"
                labels.append(label)
                sizes[label] = (spec.num_frames, *table.ratios[key])
                batch[label] = int(spec.batch_size)
                remap[c] = j
            return np.where(kept, remap[np.maximum(code, 0)], -1), labels, sizes, batch
        ids = self.table["bucket_id"]
        kept = ids.notna().to_numpy()
        codes, labels = pd.factorize(ids)
        labels = [str(x) for x in labels]
        sizes, batch = {}, {}
        for label in labels:
            res, t, key = label.split("/")
            spec = self.config.spec(res, int(t))
            sizes[label] = (spec.num_frames, *self.config.tables[res].size(key))
            batch[label] = int(spec.batch_size)
        return np.where(kept, codes, -1), labels, sizes, batch

    def plan(self) -> EpochPlan:
        """The current epoch's global schedule (computed once per epoch)."""
        if self._plan is not None and self._plan_epoch == self.epoch:
            return self._plan
        code, labels, sizes, batch_size = self._bucket_of_rows()
        rng = np.random.default_rng([self.seed, self.epoch])
        order = np.argsort(code, kind="stable")
        bounds = np.searchsorted(code[order], np.arange(-1, len(labels) + 1))
        counts: dict[str, int] = {}
        dropped: dict[str, int] = {}
        # (bucket, rows) in bucket order, then batch order: the order splits and drops are decided in
        batches: list[tuple[str, np.ndarray]] = []
        for j, label in enumerate(labels):
            rows = order[bounds[j + 1] : bounds[j + 2]]
            counts[label] = rows.size
            if self.shuffle:
                rows = rows[rng.permutation(rows.size)]
            bs = batch_size[label]
            stop = rows.size - rows.size % bs if self.drop_last else rows.size
            batches.extend((label, rows[i : i + bs]) for i in range(0, stop, bs))
            if stop < rows.size:
                dropped[label] = rows.size - stop
        if not self.drop_last:
            batches = self._fit_world_size(batches, dropped)
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        if self.drop_last:
            usable = len(batches) - len(batches) % self.num_replicas
            for label, rows in batches[usable:]:
                dropped[label] = dropped.get(label, 0) + rows.size
            batches = batches[:usable]
        if not batches:
            detail = ", ".join(f"{lb}: {counts[lb]} sample(s), batch size {batch_size[lb]}" for lb in labels)
            kind = "full batch(es)" if self.drop_last else "row(s)"
            have = sum(counts.values()) if not self.drop_last else sum(c // batch_size[lb] for lb, c in counts.items())
            raise EmptyEpochError(
                f"epoch {self.epoch}: the data cannot form one batch per rank "
                f"({have} {kind} for {self.num_replicas} rank(s)) out of "
                f"{len(self.table)} sample(s); kept per bucket: {detail or 'none (every sample was dropped)'}"
            )
        if dropped:
            why = ("drop_last: full batches only, a multiple of the world size" if self.drop_last else
                   "too few rows to give every rank the same number of batches")
            logger.warning(
                "epoch %d: %d of %d bucketed sample(s) are not trained on this epoch (%s; %d rank(s)); "
                "per bucket: %s", self.epoch, sum(dropped.values()), sum(counts.values()), why,
                self.num_replicas, ", ".join(f"{lb}: {n} of {counts[lb]}" for lb, n in sorted(dropped.items())),
            )  # fmt: skip
        self._plan = EpochPlan(labels, [lb for lb, _ in batches], [rows for _, rows in batches], sizes, dropped)
        self._plan_epoch = self.epoch
        return self._plan

    def _fit_world_size(self, batches: list[tuple[str, np.ndarray]], dropped: dict[str, int]
                        ) -> list[tuple[str, np.ndarray]]:
        """Make the batch count a multiple of the world size: split the largest batches in two
        (earliest first on a tie) while that is possible; with fewer rows than the next multiple,
        drop the smallest batches down to the multiple below (counted in ``dropped``)."""
        world = self.num_replicas
        if len(batches) % world == 0:
            return batches
        total = sum(rows.size for _, rows in batches)
        target = -(-len(batches) // world) * world
        if target > total:  # not enough rows for one more step: drop down to the last whole step
            target = len(batches) - len(batches) % world
            keep = sorted(range(len(batches)), key=lambda i: (-batches[i][1].size, i))[:target]
            for i in set(range(len(batches))) - set(keep):
                label, rows = batches[i]
                dropped[label] = dropped.get(label, 0) + rows.size
            return [batches[i] for i in sorted(keep)]
        # split: a heap of (-size, position) picks the largest, earliest batch; the halves keep their
        # place in the order (position, 0) and (position, 1)
        pieces: dict[tuple[int, ...], tuple[str, np.ndarray]] = {(i,): b for i, b in enumerate(batches)}
        heap = [(-rows.size, (i,)) for i, (_, rows) in enumerate(batches)]
        heapq.heapify(heap)
        for _ in range(target - len(batches)):
            _, key = heapq.heappop(heap)
            label, rows = pieces.pop(key)
            half = -(-rows.size // 2)
            for part, sub in ((0, rows[:half]), (1, rows[half:])):
                pieces[(*key, part)] = (label, sub)
                heapq.heappush(heap, (-sub.size, (*key, part)))
        return [pieces[k] for k in sorted(pieces)]

    # ------------------------------------------------------------------ iteration
    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch`` (reshuffles and redraws); resets the mid-epoch position."""
        if epoch != self.epoch:
            self.consumed_batches = 0
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[list[SampleKey]]:
        plan = self.plan()
        start = (self.consumed_batches // self.num_replicas) * self.num_replicas
        for i in range(start + self.rank, len(plan.accesses), self.num_replicas):
            label = plan.accesses[i]
            t, h, w = plan.sizes[label]
            self.consumed_batches = i - self.rank + self.num_replicas
            yield [SampleKey(int(row), t, h, w, label) for row in plan.batches[i]]
        self.consumed_batches = 0

    def __len__(self) -> int:
        """Batches this rank yields in a whole epoch."""
        return len(self.plan().accesses) // self.num_replicas

    def num_remaining(self) -> int:
        """Batches this rank has yet to yield in the current epoch (after a resume, fewer than len)."""
        return len(self) - self.consumed_batches // self.num_replicas

    @property
    def dropped_by_bucket(self) -> dict[str, int]:
        """Rows per bucket that this epoch's plan leaves out (see the module docstring)."""
        return dict(self.plan().dropped)

    @property
    def dropped_rows(self) -> int:
        """Rows held by a bucket that this epoch's plan leaves out (0 unless ``drop_last`` or fewer
        rows than one batch per rank needs); rows bucketing itself dropped are not counted here."""
        return sum(self.plan().dropped.values())

    def bucket_counts(self) -> dict[str, int]:
        """Samples per bucket scheduled this epoch (after any drops)."""
        plan = self.plan()
        out: dict[str, int] = {}
        for label, rows in zip(plan.accesses, plan.batches, strict=True):
            out[label] = out.get(label, 0) + rows.size
        return out

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self, num_steps: int | None = None) -> dict[str, Any]:
        """Position to resume from. Pass ``num_steps`` (steps this rank has *trained on* this epoch)
        when a prefetching DataLoader has drawn batches ahead of training."""
        consumed = self.consumed_batches if num_steps is None else int(num_steps) * self.num_replicas
        return {"seed": self.seed, "epoch": self.epoch, "consumed_batches": consumed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_keys(state, ["seed", "epoch", "consumed_batches"], "sampler state")
        if int(state["seed"]) != self.seed:
            raise ValueError(f"sampler state has seed {state['seed']}, this sampler seed {self.seed}")
        self.epoch = int(state["epoch"])
        # a different world size resumes at the last whole step of the new size (as 1.1 did)
        self.consumed_batches = int(state["consumed_batches"])
