"""The ``ray`` curation executor: the same per-video partition work as the local process pool, as Ray
tasks (CPU stages) or Ray actors holding GPUs (GPU scorers, the VLM captioner).

Each video is one unit of work: its task runs the step's work function and writes the video's partition
to the partition store itself (shared storage: a folder every node mounts, or an fsspec URL such as
``s3://bucket/prefix``), so a video that finished is kept whatever happens to the others. The driver
keeps at most ``max_in_flight`` videos submitted (``ray.wait``), resubmits a video whose task raised or
whose worker process died up to ``max_retries`` times, and raises :class:`PartitionFailures` naming the
videos that still failed once every other video is done. A rerun then computes only what is missing.

``address: null`` starts a local cluster bound to 127.0.0.1 (a laptop; ``num_cpus`` / ``num_gpus``
size it) or reuses the cluster this process is already connected to; ``address: auto`` or
``ray://head:10001`` / ``head:6379`` joins a running one, whose nodes must have this package installed
(or get it through ``runtime_env``).

Ray is imported only here, and only when the executor runs: the rest of the library works without it.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from opensora_mlops.config import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from opensora_mlops.curation.partitions import PartitionStore, PartitionTask, WorkFn

log = logging.getLogger(__name__)

INSTALL_HINT = 'pip install "opensora-mlops[ray]" (or: pip install "ray==2.60.0")'


class PartitionFailures(RuntimeError):
    """Videos whose partition could not be computed after every retry; the others were written."""

    def __init__(self, desc: str, failures: Mapping[str, str], done: int) -> None:
        self.failures = dict(failures)
        lines = "; ".join(f"{name}: {reason}" for name, reason in sorted(self.failures.items()))
        super().__init__(f"{desc}: {len(self.failures)} video(s) failed after every retry ({lines}); "
                         f"the {done} finished video(s) are stored and a rerun computes only the rest")


@dataclass(frozen=True)
class RayConfig:
    """``curation.ray``: the cluster to run on and how work is submitted to it.

    ``address``: null = a local cluster on 127.0.0.1 (or the one this process is connected to);
    otherwise ``auto`` / ``ray://host:10001`` / ``host:6379`` of a running cluster.
    ``num_cpus`` / ``num_gpus``: the local cluster's size (null = the machine's); ignored when joining.
    ``max_in_flight``: videos submitted and not finished at once, per step (bounds driver memory and
    the object store). ``max_retries``: extra attempts for a video whose task raised or whose worker
    died. ``cpus_per_task``: CPUs one video's task reserves. GPU stages run in ``gpu_actors`` actors
    (null = the cluster's GPUs / ``gpus_per_actor``) of ``gpus_per_actor`` GPUs each, which keep their
    models loaded between videos. ``runtime_env``: passed to ``ray.init`` (e.g. ``working_dir``).
    """

    address: str | None = None
    num_cpus: int | None = None
    num_gpus: int | None = None
    max_in_flight: int = 16
    max_retries: int = 2
    cpus_per_task: float = 1.0
    gpus_per_actor: float = 1.0
    gpu_actors: int | None = None
    runtime_env: dict[str, Any] | None = field(default=None, hash=False)

    def __post_init__(self) -> None:
        if self.max_in_flight < 1:
            raise ConfigError(f"curation.ray.max_in_flight must be >= 1, got {self.max_in_flight}")
        if self.max_retries < 0:
            raise ConfigError(f"curation.ray.max_retries must be >= 0, got {self.max_retries}")
        if self.cpus_per_task <= 0:
            raise ConfigError(f"curation.ray.cpus_per_task must be > 0, got {self.cpus_per_task}")
        if self.gpus_per_actor <= 0:
            raise ConfigError(f"curation.ray.gpus_per_actor must be > 0, got {self.gpus_per_actor}")
        if self.gpu_actors is not None and self.gpu_actors < 1:
            raise ConfigError(f"curation.ray.gpu_actors must be >= 1 or null, got {self.gpu_actors}")
        for name in ("num_cpus", "num_gpus"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ConfigError(f"curation.ray.{name} must be >= 0 or null, got {value}")


def import_ray():
    """``ray``, or a ConfigError saying how to install it."""
    try:
        import ray
    except ImportError as exc:  # pragma: no cover - ray is in the dev extra
        raise ConfigError(f"curation.executor is 'ray' but Ray is not installed: {INSTALL_HINT}") from exc
    return ray


def connect(config: RayConfig) -> bool:
    """Connect this process to the cluster of ``config``; True when it started a local one. A process
    already connected keeps its connection (tests, notebooks and the Prefect flow start it first)."""
    ray = import_ray()
    if ray.is_initialized():
        return False
    common = {"runtime_env": config.runtime_env, "log_to_driver": True, "logging_level": logging.WARNING}
    if config.address:
        ray.init(address=config.address, **common)
        return False
    ray.init(address="local", num_cpus=config.num_cpus, num_gpus=config.num_gpus, include_dashboard=False,
             _node_ip_address="127.0.0.1", **common)
    return True


def _run_one(fn: WorkFn, task: PartitionTask, store: PartitionStore, cwd: str) -> str:
    """One video in a Ray worker. Relative paths in the payload mean what they mean to the driver, as
    with the local executor: the worker works in the driver's folder when this machine has it (on a
    cluster, use absolute paths on shared storage or URLs)."""
    from opensora_mlops.curation.partitions import compute_partition

    if os.path.isdir(cwd) and os.getcwd() != cwd:
        os.chdir(cwd)
    return compute_partition(fn, task, store)


class _PartitionActor:
    """Runs one GPU stage's videos one after another; the work function's module-level model cache
    (scorers, VLM) stays loaded in this process between videos."""

    def run(self, fn: WorkFn, task: PartitionTask, store: PartitionStore, cwd: str) -> str:
        return _run_one(fn, task, store, cwd)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[-1] if text else ''}"[:300]


def map_partitions(
    todo: Sequence[PartitionTask],
    fn: WorkFn,
    store: PartitionStore,
    config: RayConfig,
    desc: str,
    on_done: Callable[[str], None],
    gpu: bool = False,
) -> None:
    """Compute the partitions of ``todo`` on the cluster; ``on_done(name)`` after each stored one.

    CPU stages: one Ray task per video (``cpus_per_task`` CPUs). GPU stages (``gpu=True``): a pool of
    actors with ``gpus_per_actor`` GPUs each. Raises :class:`PartitionFailures` after the rest finished
    when videos fail ``max_retries + 1`` times.
    """
    if not todo:
        return
    ray = import_ray()
    connect(config)
    fn_ref, store_ref, cwd = ray.put(fn), ray.put(store), os.getcwd()
    pool = ActorPool(ray.remote(_PartitionActor), config, desc, len(todo), gpu=True) if gpu else None
    remote = ray.remote(_run_one).options(num_cpus=config.cpus_per_task, max_retries=0)

    def submit(task: PartitionTask, actor: Any) -> Any:
        if actor is not None:
            return actor.run.remote(fn_ref, task, store_ref, cwd)
        return remote.remote(fn_ref, task, store_ref, cwd)

    map_with_retries(todo, lambda task: task.name, submit, config, desc, on_done, pool)


class ActorPool:
    """``count`` actors of ``actor_cls`` (a ``ray.remote`` class) each reserving ``cpus_per_task`` CPUs
    and, with ``gpu``, ``gpus_per_actor`` GPUs; ``count`` defaults to the cluster's GPUs / GPUs per actor
    (``gpu_actors`` overrides), or its CPUs / CPUs per task for CPU actors, never more than ``todo``.
    A ConfigError when a GPU pool meets a cluster without GPUs. ``args`` go to every actor's ``__init__``."""

    def __init__(self, actor_cls: Any, config: RayConfig, desc: str, todo: int, gpu: bool,
                 args: Sequence[Any] = ()) -> None:
        ray = import_ray()
        resources = ray.cluster_resources()
        options = {"num_cpus": config.cpus_per_task, "max_restarts": 0}
        if gpu:
            gpus = float(resources.get("GPU", 0.0))
            if gpus < config.gpus_per_actor:
                raise ConfigError(f"{desc} runs on GPUs but the Ray cluster has {gpus:g} "
                                  f"(curation.ray.gpus_per_actor is {config.gpus_per_actor:g}); set the stage's "
                                  "device to cpu or join a cluster with GPUs (curation.ray.address)")
            options["num_gpus"] = config.gpus_per_actor
            fits = int(gpus // config.gpus_per_actor)
        else:
            fits = int(float(resources.get("CPU", 1.0)) // config.cpus_per_task)
        self._cls = actor_cls.options(**options)
        self._args = tuple(args)
        count = min(config.gpu_actors or max(1, fits), todo) if gpu else min(max(1, fits), todo)
        self.actors = [self._new() for _ in range(count)]
        self.load = [0] * count

    def _new(self) -> Any:
        return self._cls.remote(*self._args)

    def replace(self, slot: int) -> None:
        """A fresh actor in ``slot`` (its process died)."""
        self.actors[slot] = self._new()

    def least_loaded(self) -> int:
        return min(range(len(self.actors)), key=self.load.__getitem__)

    def kill(self) -> None:
        for actor in self.actors:
            import_ray().kill(actor)


def map_with_retries(
    items: Sequence[Any],
    name_of: Callable[[Any], str],
    submit: Callable[[Any, Any], Any],
    config: RayConfig,
    desc: str,
    on_done: Callable[[str], None],
    pool: ActorPool | None = None,
) -> None:
    """Run every item on the cluster, at most ``max_in_flight`` at once: ``submit(item, actor)`` returns
    the item's ObjectRef (``actor`` is the least busy of ``pool``'s actors, None without a pool). An
    item whose call raised or whose worker died is resubmitted up to ``max_retries`` times (a dead actor
    is replaced first); :class:`PartitionFailures` names those that still failed once the others are
    done. ``on_done(name)`` after each success. Interrupted: submitted tasks are cancelled."""
    ray = import_ray()
    from ray.exceptions import RayActorError, RayError

    limit = min(config.max_in_flight, len(items))
    pending: deque[Any] = deque(items)
    inflight: dict[Any, tuple[Any, int]] = {}  # ObjectRef -> (item, actor slot or -1)
    attempts: dict[str, int] = {}
    failures: dict[str, str] = {}
    done = 0
    try:
        while pending or inflight:
            while pending and len(inflight) < limit:
                item = pending.popleft()
                slot = pool.least_loaded() if pool is not None else -1
                ref = submit(item, pool.actors[slot] if pool is not None else None)
                if pool is not None:
                    pool.load[slot] += 1
                inflight[ref] = (item, slot)
            ready, _ = ray.wait(list(inflight), num_returns=1)
            for ref in ready:
                item, slot = inflight.pop(ref)
                name = name_of(item)
                if pool is not None:
                    pool.load[slot] -= 1
                try:
                    ray.get(ref)
                except RayError as exc:
                    if pool is not None and isinstance(exc, RayActorError):
                        pool.replace(slot)  # its process died: a fresh one takes the slot
                    attempts[name] = attempts.get(name, 0) + 1
                    if attempts[name] <= config.max_retries:
                        log.warning("%s: %s failed (attempt %d of %d), retrying: %s", desc, name,
                                    attempts[name], config.max_retries + 1, _short(exc))
                        pending.append(item)
                    else:
                        failures[name] = _short(exc)
                    continue
                done += 1
                on_done(name)
    except BaseException:  # interrupted: stop the submitted tasks (finished work stays)
        if pool is None:
            for ref in inflight:
                ray.cancel(ref, force=True)
        raise
    finally:
        if pool is not None:
            pool.kill()
    if failures:
        raise PartitionFailures(desc, failures, done)
