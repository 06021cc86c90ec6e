"""Partition-by-partition curation: one partition per source video, cached, optionally in parallel.

Each curation step (scenes, clips, scores) maps a per-video function over the videos. Its result for
one video is stored as a Parquet partition ``<root>/<step>/<stem>-<key>.parquet`` (rows kept) plus
``…-<key>.dropped.parquet`` (rows quarantined, with ``reason``), where ``key`` hashes the video's
fingerprint (absolute path + size + mtime, or its content hash) and the parameters of this step and of
every step before it. A re-run with the same file and parameters loads the partition instead of
recomputing it; a changed file or parameter gives a new key, so stale partitions are never read.

:func:`run_partitioned` maps the work over a ``concurrent.futures.ProcessPoolExecutor`` with
``workers`` processes (1 = in process). Work functions and their arguments are plain picklable data.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from opensora_mlops.config import ConfigError


def file_fingerprint(path: str | Path, mode: str = "stat") -> str:
    """Identity of a source file's content: "stat" (absolute path, size, mtime) or "content" (SHA-1).

    A missing file gets a fingerprint too (its name), so it can be quarantined like any bad input.
    """
    path = Path(path)
    if mode not in {"stat", "content"}:
        raise ConfigError(f"curation.partitions.fingerprint must be 'stat' or 'content', got {mode!r}")
    try:
        if mode == "content":
            digest = hashlib.sha1()
            with path.open("rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
            return f"{path.resolve()}|sha1:{digest.hexdigest()}"
        stat = path.stat()
        return f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    except OSError:
        return f"{path.resolve()}|missing"


def params_hash(*parts: Any) -> str:
    """Stable hash of JSON-able parameters (dicts sorted by key)."""
    blob = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha1(blob.encode()).hexdigest()


def partition_key(fingerprint: str, *params: Any) -> str:
    return params_hash(fingerprint, *params)[:20]


@dataclass(frozen=True)
class PartitionStore:
    """Parquet partitions of one step under ``root/step``."""

    root: str
    step: str

    @property
    def folder(self) -> Path:
        return Path(self.root) / self.step

    def _paths(self, name: str) -> tuple[Path, Path]:
        return self.folder / f"{name}.parquet", self.folder / f"{name}.dropped.parquet"

    def load(self, name: str) -> tuple[pd.DataFrame, pd.DataFrame] | None:
        kept, dropped = self._paths(name)
        if not (kept.exists() and dropped.exists()):
            return None
        return pd.read_parquet(kept), pd.read_parquet(dropped)

    def save(self, name: str, kept: pd.DataFrame, dropped: pd.DataFrame) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        kept_path, dropped_path = self._paths(name)
        # write-then-rename, so an interrupted run never leaves a half partition that looks done
        for frame, path in ((kept, kept_path), (dropped, dropped_path)):
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            frame.to_parquet(tmp, index=False)
            tmp.replace(path)

    def names(self) -> list[str]:
        if not self.folder.exists():
            return []
        return sorted(p.name[: -len(".dropped.parquet")] for p in self.folder.glob("*.dropped.parquet"))


@dataclass(frozen=True)
class PartitionTask:
    """One unit of work: ``name`` identifies its partition; ``payload`` goes to the work function."""

    name: str
    payload: Mapping[str, Any]


@dataclass
class PartitionRun:
    """Result of :func:`run_partitioned`: concatenated tables and what was computed vs reused."""

    kept: pd.DataFrame
    dropped: pd.DataFrame
    computed: list[str]
    reused: list[str]


WorkFn = Callable[[Mapping[str, Any]], tuple[pd.DataFrame, pd.DataFrame]]


def _run_one(fn: WorkFn, task: PartitionTask, store: PartitionStore) -> str:
    kept, dropped = fn(task.payload)
    store.save(task.name, kept, dropped)
    return task.name


def run_partitioned(
    tasks: Sequence[PartitionTask],
    fn: WorkFn,
    store: PartitionStore,
    workers: int = 1,
    desc: str = "partitions",
    is_valid: Callable[[pd.DataFrame], bool] | None = None,
    progress: bool = True,
) -> PartitionRun:
    """Compute the partitions not stored yet (in ``workers`` processes), then load all of them.

    ``is_valid(kept)`` may reject a stored partition (e.g. its clip files were deleted): it is redone.
    """
    if workers < 1:
        raise ConfigError(f"curation.partitions.workers must be >= 1, got {workers}")
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate partition names in {desc}: the same video is listed twice")
    todo, reused = [], []
    for task in tasks:
        stored = store.load(task.name)
        if stored is not None and (is_valid is None or is_valid(stored[0])):
            reused.append(task.name)
        else:
            todo.append(task)
    bar = tqdm(total=len(todo), desc=desc, unit="video", disable=not progress or not todo)
    if workers == 1 or len(todo) <= 1:
        for task in todo:
            _run_one(fn, task, store)
            bar.update()
    else:
        # forkserver: workers fork from a clean single-threaded server, never from this process, whose
        # FFmpeg/OpenCV thread pools may be mid-operation (fork + threads can deadlock)
        context = multiprocessing.get_context("forkserver")
        # the server imports the work function's module once; each worker forks from it ready to go
        context.set_forkserver_preload([fn.__module__])
        with ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=context) as pool:
            futures = [pool.submit(_run_one, fn, task, store) for task in todo]
            for future in as_completed(futures):
                future.result()
                bar.update()
    bar.close()
    kept_parts, dropped_parts = [], []
    for task in tasks:
        stored = store.load(task.name)
        if stored is None:  # pragma: no cover - only if the disk lost a file we just wrote
            raise RuntimeError(f"partition {task.name} of {desc} missing after computing it")
        kept_parts.append(stored[0])
        dropped_parts.append(stored[1])
    return PartitionRun(_concat(kept_parts), _concat(dropped_parts), [t.name for t in todo], reused)


def _concat(parts: list[pd.DataFrame]) -> pd.DataFrame:
    parts = [p for p in parts if len(p.columns)]
    non_empty = [p for p in parts if len(p)]
    if non_empty:
        return pd.concat(non_empty, ignore_index=True)
    return parts[0].iloc[0:0].reset_index(drop=True) if parts else pd.DataFrame()
