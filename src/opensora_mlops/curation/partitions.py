"""Partition-by-partition curation: one partition per source video, cached, locally or on a Ray cluster.

Each curation step (scenes, clips, captions, scores) maps a per-video function over the videos. Its
result for one video is stored as a Parquet partition ``<root>/<step>/<name>-<key>.parquet`` (rows kept)
plus ``…-<key>.dropped.parquet`` (rows quarantined, with ``reason``; written last, so it marks the
partition done). The key is content-addressed: it hashes the video's bytes (SHA-256,
:func:`file_fingerprint`), every parameter and input that changes the step's output, the step's code
(:func:`code_version`: the source of its modules and the versions of the libraries doing the work) and
the key of the step before it — never an absolute path or an mtime, so a moved data root reuses its
partitions and an edited file, parameter or caption is recomputed. The partitions hold no absolute
paths either: the caller attaches the current ones after loading.

``root`` is a folder or any fsspec URL (``s3://bucket/prefix``, ``gs://…``, ``memory://…``): a store
on shared storage is reused by every machine that computes the same keys.

:func:`run_partitioned` maps the work with the ``local`` executor (a
``concurrent.futures.ProcessPoolExecutor`` of ``workers`` processes; 1 = in process) or the ``ray``
executor (:mod:`opensora_mlops.curation.ray_executor`). Either way each video's partition is written
as soon as that video is done. Work functions and their arguments are plain picklable data.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import inspect
import json
import multiprocessing
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import fsspec
import pandas as pd
from fsspec.implementations.local import LocalFileSystem
from tqdm.auto import tqdm

from opensora_mlops.config import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from opensora_mlops.curation.ray_executor import RayConfig

EXECUTORS = ("local", "ray")


def check_executor(executor: str) -> None:
    """``curation.executor`` is one of :data:`EXECUTORS` (a ConfigError otherwise)."""
    if executor not in EXECUTORS:
        raise ConfigError(f"curation.executor must be one of {list(EXECUTORS)}, got {executor!r}")

_DIGESTS: dict[tuple[str, int, int, int], str] = {}  # per process: each file is read once per run


def file_fingerprint(path: str | Path) -> str:
    """``sha256:<hex>`` of a file's bytes; ``missing`` when it cannot be read (so a bad input is
    quarantined like any other). Memoised per process by (path, size, mtime, inode) only to avoid
    re-reading a file within one run; the fingerprint itself depends on the content alone."""
    path = Path(path)
    try:
        stat = path.stat()
        memo = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino)
        if memo not in _DIGESTS:
            digest = hashlib.sha256()
            with path.open("rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
            _DIGESTS[memo] = f"sha256:{digest.hexdigest()}"
        return _DIGESTS[memo]
    except OSError:
        return "missing"


def files_fingerprint(path: str | Path | None) -> str | None:
    """Content fingerprint of a weights file or of every file in a weights directory (relative names
    and bytes); None for None."""
    if path is None:
        return None
    root = Path(path)
    if root.is_dir():
        parts = [(str(f.relative_to(root)), file_fingerprint(f)) for f in sorted(root.rglob("*")) if f.is_file()]
        return params_hash(parts)
    return file_fingerprint(root)


_CODE: dict[tuple[str, ...], str] = {}


def code_version(modules: tuple[str, ...], distributions: tuple[str, ...] = ()) -> str:
    """Hash of the source of ``modules`` and the installed versions of ``distributions``: a cached
    result is redone when the code that made it changes."""
    key = (*modules, "|", *distributions)
    if key not in _CODE:
        parts = []
        for name in modules:
            parts.append(inspect.getsource(importlib.import_module(name)))
        for dist in distributions:
            try:
                parts.append(f"{dist}=={importlib.metadata.version(dist)}")
            except importlib.metadata.PackageNotFoundError:
                parts.append(f"{dist} not installed")
        _CODE[key] = params_hash(parts)
    return _CODE[key]


def params_hash(*parts: Any) -> str:
    """Stable hash of JSON-able parameters (dicts sorted by key)."""
    blob = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha1(blob.encode()).hexdigest()


def partition_key(fingerprint: str, *params: Any) -> str:
    return params_hash(fingerprint, *params)[:20]


def _is_url(root: str) -> bool:
    return "://" in root


@dataclass(frozen=True)
class PartitionStore:
    """Parquet partitions of one step under ``root/step``; ``root`` is a folder or an fsspec URL."""

    root: str
    step: str

    def _located(self) -> tuple[fsspec.AbstractFileSystem, str]:
        """(filesystem, ``root/step`` as a path in it), resolved once per operation: a relative folder
        is taken from the current working directory at each call (fsspec caches the filesystems)."""
        fs, path = fsspec.core.url_to_fs(str(self.root))
        return fs, f"{path.rstrip('/')}/{self.step}"

    def absolute(self) -> PartitionStore:
        """The same store with a local root made absolute (another process may run in another folder)."""
        return self if _is_url(str(self.root)) else PartitionStore(str(Path(self.root).resolve()), self.step)

    def load(self, name: str) -> tuple[pd.DataFrame, pd.DataFrame] | None:
        fs, folder = self._located()
        kept, dropped = f"{folder}/{name}.parquet", f"{folder}/{name}.dropped.parquet"
        if not (fs.exists(dropped) and fs.exists(kept)):
            return None
        with fs.open(kept, "rb") as kept_fh, fs.open(dropped, "rb") as dropped_fh:
            return pd.read_parquet(kept_fh), pd.read_parquet(dropped_fh)

    def save(self, name: str, kept: pd.DataFrame, dropped: pd.DataFrame) -> None:
        fs, folder = self._located()
        local = isinstance(fs, LocalFileSystem)
        fs.makedirs(folder, exist_ok=True)
        # the dropped rows last: their file marks the partition done. Local files are written then
        # renamed, so an interrupted run never leaves a half partition that looks done; an object store
        # shows an object only once its upload completed.
        for frame, suffix in ((kept, ".parquet"), (dropped, ".dropped.parquet")):
            path = f"{folder}/{name}{suffix}"
            target = f"{path}.tmp{os.getpid()}" if local else path
            with fs.open(target, "wb") as fh:
                frame.to_parquet(fh, index=False)
            if local:
                fs.mv(target, path)

    def names(self) -> list[str]:
        fs, folder = self._located()
        if not fs.exists(folder):
            return []
        found = fs.glob(f"{folder}/*.dropped.parquet")
        return sorted(Path(p).name[: -len(".dropped.parquet")] for p in found)

@dataclass(frozen=True)
class PartitionTask:
    """One unit of work: ``name`` identifies its partition; ``payload`` goes to the work function."""

    name: str
    payload: Mapping[str, Any]


@dataclass
class PartitionRun:
    """Result of :func:`run_partitioned`: concatenated tables, each task's own, and what was computed vs
    reused."""

    kept: pd.DataFrame
    dropped: pd.DataFrame
    computed: list[str]
    reused: list[str]
    parts: dict[str, tuple[pd.DataFrame, pd.DataFrame]]


WorkFn = Callable[[Mapping[str, Any]], tuple[pd.DataFrame, pd.DataFrame]]


def compute_partition(fn: WorkFn, task: PartitionTask, store: PartitionStore) -> str:
    """Run one video's work and store its partition (in whichever process or machine runs it)."""
    kept, dropped = fn(task.payload)
    store.save(task.name, kept, dropped)
    return task.name


def run_partitioned(
    tasks: Sequence[PartitionTask],
    fn: WorkFn,
    store: PartitionStore,
    workers: int = 1,
    desc: str = "partitions",
    is_valid: Callable[[PartitionTask, pd.DataFrame], bool] | None = None,
    progress: bool = True,
    executor: str = "local",
    ray: RayConfig | None = None,
    gpu: bool = False,
) -> PartitionRun:
    """Compute the partitions not stored yet, then load all of them.

    ``executor`` "local": ``workers`` processes on this machine; "ray": Ray tasks on the cluster of
    ``ray`` (``gpu=True``: the step needs GPUs, so it runs in GPU actors). ``is_valid(task, kept)`` may
    reject a stored partition (e.g. its clip files were deleted): it is redone.
    """
    check_executor(executor)
    if workers < 1:
        raise ConfigError(f"curation.partitions.workers must be >= 1, got {workers}")
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        # callers de-duplicate their inputs (same content = one partition); this is a bug guard
        raise ValueError(f"duplicate partition names in {desc}: the same video is listed twice")
    todo, reused = [], []
    for task in tasks:
        stored = store.load(task.name)
        if stored is not None and (is_valid is None or is_valid(task, stored[0])):
            reused.append(task.name)
        else:
            todo.append(task)
    bar = tqdm(total=len(todo), desc=desc, unit="video", disable=not progress or not todo)
    try:
        if executor == "ray":
            from opensora_mlops.curation.ray_executor import RayConfig, map_partitions

            map_partitions(todo, fn, store.absolute(), ray or RayConfig(), desc, lambda _name: bar.update(), gpu=gpu)
        else:
            _map_local(todo, fn, store, workers, bar)
    finally:
        bar.close()
    kept_parts, dropped_parts, parts = [], [], {}
    for task in tasks:
        stored = store.load(task.name)
        if stored is None:  # pragma: no cover - only if the disk lost a file we just wrote
            raise RuntimeError(f"partition {task.name} of {desc} missing after computing it")
        kept_parts.append(stored[0])
        dropped_parts.append(stored[1])
        parts[task.name] = stored
    return PartitionRun(_concat(kept_parts), _concat(dropped_parts), [t.name for t in todo], reused, parts)


def _map_local(todo: Sequence[PartitionTask], fn: WorkFn, store: PartitionStore, workers: int, bar) -> None:
    if workers == 1 or len(todo) <= 1:
        for task in todo:
            compute_partition(fn, task, store)
            bar.update()
        return
    # forkserver: workers fork from a clean single-threaded server, never from this process, whose
    # FFmpeg/OpenCV thread pools may be mid-operation (fork + threads can deadlock)
    context = multiprocessing.get_context("forkserver")
    # the server imports the work function's module once; each worker forks from it ready to go
    context.set_forkserver_preload([fn.__module__])
    with ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=context) as pool:
        futures = [pool.submit(compute_partition, fn, task, store) for task in todo]
        for future in as_completed(futures):
            future.result()
            bar.update()


def _concat(parts: list[pd.DataFrame]) -> pd.DataFrame:
    parts = [p for p in parts if len(p.columns)]
    non_empty = [p for p in parts if len(p)]
    if non_empty:
        return pd.concat(non_empty, ignore_index=True)
    return parts[0].iloc[0:0].reset_index(drop=True) if parts else pd.DataFrame()
