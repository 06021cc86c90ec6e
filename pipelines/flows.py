"""Prefect flows that run the project's Kedro pipelines.

Each Kedro pipeline is one Prefect task run (named ``kedro-<pipeline>``) with retries and its log
forwarded to Prefect. Tasks run in order and a failure stops the flow: stage 2 never starts from a
stage 1 that failed. A task runs Kedro either

* ``runner="subprocess"`` (default, production): ``python -m kedro run --pipelines=<name> [--env …]
  [--params …]`` in the project directory, an argument list (no shell), so each pipeline gets a fresh
  interpreter (GPU memory released between stages; torchrun/colossalai launchers work the same way), or
* ``runner="in_process"``: a :class:`kedro.framework.session.KedroSession` in the worker's process
  (no interpreter start-up; useful for quick local runs).

The flows:

* :func:`curation_flow` — nightly: ingest new footage, curate it, rebuild the bucket tables;
* :func:`training_flow` — weekly: fine-tune through the three stages, evaluate, export;
* :func:`kedro_flow` — any list of pipelines, for ad-hoc runs from the Prefect UI.

Deployments with schedules on a process work pool live in :mod:`pipelines.deployments`.

The curation and training flows share the GPU cluster: each holds one slot of the Prefect global
concurrency limit :data:`CLUSTER_LIMIT` (limit 1, created by ``pipelines/deployments.py``) for its whole
run, so a nightly curation never overlaps a weekly training run; a flow that cannot get the slot within
``slot_timeout_seconds`` fails with a TimeoutError instead of piling up. ``timeout_seconds`` bounds each
pipeline (the ``kedro run`` subprocess is killed past it; the task's retries then apply, and a curation
rerun resumes from its stored partitions). ``ray_address`` runs curation on that Ray cluster
(``curation.executor=ray``); the deployments take it from ``conf/cluster/parameters_curation.yml``.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from prefect import flow, get_run_logger, task
from prefect.concurrency.sync import concurrency

#: The project root (this file is <root>/pipelines/flows.py).
PROJECT_ROOT = Path(__file__).resolve().parents[1]

CURATION_PIPELINES: tuple[str, ...] = ("ingestion", "curation", "bucketing")
TRAINING_PIPELINES: tuple[str, ...] = ("stage1", "stage2", "stage3", "evaluation", "export")
RUNNERS = ("subprocess", "in_process")
#: Global concurrency limit (1 slot) held by the curation and the training flow for their whole run.
CLUSTER_LIMIT = "gpu-cluster"
#: Defaults of the scheduled flows: a nightly curation gives up waiting for the cluster after 4 h and
#: stops a pipeline after 8 h; training waits for the cluster as long as it takes.
CURATION_SLOT_TIMEOUT_S = 4 * 3600.0
CURATION_PIPELINE_TIMEOUT_S = 8 * 3600.0

#: Offline and quiet: no telemetry or hub downloads from scheduled runs.
QUIET_ENV = {
    "KEDRO_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "MPLBACKEND": "Agg",
}


def _format_params(params: Mapping[str, Any]) -> str:
    """Kedro's ``--params`` syntax: ``a.b=1,c=x`` (values must not contain commas)."""
    parts = []
    for key, value in params.items():
        text = str(value)
        if "," in text:
            raise ValueError(
                f"--params value for {key!r} contains a comma, which Kedro's CLI splits on: {text!r}"
            )
        parts.append(f"{key}={text}")
    return ",".join(parts)


def kedro_command(
    pipeline: str, env: str | None = None, params: Mapping[str, Any] | None = None
) -> list[str]:
    """The ``kedro run`` argument list for one pipeline."""
    command = [sys.executable, "-m", "kedro", "run", f"--pipelines={pipeline}"]
    if env:
        command.append(f"--env={env}")
    if params:
        command.append(f"--params={_format_params(params)}")
    return command


def cluster_ray_address(project_dir: str | Path = PROJECT_ROOT, env: str = "cluster") -> str | None:
    """``curation.ray.address`` of ``conf/<env>/parameters_curation.yml`` (None when it names none)."""
    path = Path(project_dir) / "conf" / env / "parameters_curation.yml"
    if not path.is_file():
        return None
    curation = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("curation") or {}
    return (curation.get("ray") or {}).get("address")


def _run_subprocess(
    pipeline: str, project_dir: Path, env: str | None, params: Mapping[str, Any] | None,
    timeout_seconds: float | None = None,
) -> None:
    logger = get_run_logger()
    command = kedro_command(pipeline, env, params)
    logger.info("running %s in %s", " ".join(command[1:]), project_dir)
    process_env = dict(os.environ) | QUIET_ENV
    tail: list[str] = []
    timed_out = threading.Event()
    with subprocess.Popen(
        command, cwd=project_dir, env=process_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as process:
        def kill() -> None:
            timed_out.set()
            process.kill()

        timer = threading.Timer(timeout_seconds, kill) if timeout_seconds else None
        if timer:
            timer.daemon = True
            timer.start()
        try:
            assert process.stdout is not None
            for line in process.stdout:
                line = line.rstrip()
                if line:
                    logger.info("[kedro %s] %s", pipeline, line)
                    tail = (tail + [line])[-40:]
            returncode = process.wait()
        finally:
            if timer:
                timer.cancel()
    if timed_out.is_set():
        raise TimeoutError(f"kedro pipeline {pipeline!r} ran past its {timeout_seconds:g} s timeout and was "
                           "stopped; last output:\n" + "\n".join(tail))
    if returncode != 0:
        raise RuntimeError(
            f"kedro pipeline {pipeline!r} failed with exit code {returncode}; last output:\n"
            + "\n".join(tail)
        )


def _run_in_process(
    pipeline: str, project_dir: Path, env: str | None, params: Mapping[str, Any] | None
) -> None:
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    logger = get_run_logger()
    logger.info("running kedro pipeline %r in-process in %s", pipeline, project_dir)
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    bootstrap_project(project_dir)
    with KedroSession.create(project_path=project_dir, env=env, runtime_params=dict(params or {})) as session:
        session.run(pipeline_names=[pipeline])


@task(retries=2, retry_delay_seconds=60, task_run_name="kedro-{pipeline}", log_prints=True)
def run_kedro_pipeline(
    pipeline: str,
    project_dir: str,
    env: str | None = None,
    params: dict[str, Any] | None = None,
    runner: str = "subprocess",
    timeout_seconds: float | None = None,
) -> dict[str, Any]:
    """Run one Kedro pipeline; returns ``{"pipeline", "seconds", "runner"}``. Raises on failure (retried).

    ``timeout_seconds``: the subprocess runner kills ``kedro run`` past it (TimeoutError); the
    in-process runner cannot stop a session midway and only warns that it is not enforced."""
    if runner not in RUNNERS:
        raise ValueError(f"runner must be one of {RUNNERS}, got {runner!r}")
    root = Path(project_dir).resolve()
    if not (root / "pyproject.toml").is_file() or not (root / "conf").is_dir():
        raise FileNotFoundError(f"{root} is not a Kedro project directory (no pyproject.toml / conf/)")
    start = time.monotonic()
    if runner == "subprocess":
        _run_subprocess(pipeline, root, env, params, timeout_seconds)
    else:
        if timeout_seconds:
            get_run_logger().warning("timeout_seconds is not enforced with runner='in_process'")
        _run_in_process(pipeline, root, env, params)
    seconds = time.monotonic() - start
    get_run_logger().info("kedro pipeline %r finished in %.1f s", pipeline, seconds)
    return {"pipeline": pipeline, "seconds": seconds, "runner": runner}


def _run_sequence(
    pipelines: Sequence[str],
    project_dir: str | None,
    env: str | None,
    params: dict[str, Any] | None,
    runner: str,
    retries: int | None,
    retry_delay_seconds: float | None,
    timeout_seconds: float | None = None,
) -> list[dict[str, Any]]:
    if not pipelines:
        raise ValueError("no pipelines to run")
    options: dict[str, Any] = {}
    if retries is not None:
        options["retries"] = retries
    if retry_delay_seconds is not None:
        options["retry_delay_seconds"] = retry_delay_seconds
    step = run_kedro_pipeline.with_options(**options) if options else run_kedro_pipeline
    directory = str(Path(project_dir).resolve()) if project_dir else str(PROJECT_ROOT)
    # in order, each waiting for the previous: a failure raises here and stops the flow
    return [step(name, directory, env, params, runner, timeout_seconds) for name in pipelines]


@contextlib.contextmanager
def _cluster_slot(limit: str | None, timeout_seconds: float | None):
    """Hold one slot of the global concurrency limit ``limit`` (None: no limit) for the block."""
    if not limit:
        yield
        return
    logger = get_run_logger()
    logger.info("waiting for a slot of concurrency limit %r (at most %s s)", limit, timeout_seconds)
    # strict: a missing limit is an error, not a silent "no limit" (deployments.py creates it)
    with concurrency(limit, occupy=1, timeout_seconds=timeout_seconds, strict=True):
        logger.info("holding concurrency limit %r", limit)
        yield


def _with_ray(params: dict[str, Any] | None, ray_address: str | None) -> dict[str, Any] | None:
    if not ray_address:
        return params
    return {**(params or {}), "curation.executor": "ray", "curation.ray.address": ray_address}


@flow(name="kedro-pipelines", log_prints=True)
def kedro_flow(
    pipelines: list[str],
    project_dir: str | None = None,
    env: str | None = None,
    params: dict[str, Any] | None = None,
    runner: str = "subprocess",
    retries: int | None = None,
    retry_delay_seconds: float | None = None,
    timeout_seconds: float | None = None,
) -> list[dict[str, Any]]:
    """Run the given Kedro pipelines in order, one task each (no concurrency slot: ad-hoc runs)."""
    return _run_sequence(pipelines, project_dir, env, params, runner, retries, retry_delay_seconds,
                         timeout_seconds)


@flow(name="nightly-curation", log_prints=True)
def curation_flow(
    project_dir: str | None = None,
    env: str | None = None,
    pipelines: list[str] = list(CURATION_PIPELINES),  # noqa: B006 (Prefect parameters are copied per run)
    params: dict[str, Any] | None = None,
    runner: str = "subprocess",
    retries: int | None = None,
    retry_delay_seconds: float | None = None,
    ray_address: str | None = None,
    concurrency_limit: str | None = CLUSTER_LIMIT,
    slot_timeout_seconds: float | None = CURATION_SLOT_TIMEOUT_S,
    timeout_seconds: float | None = CURATION_PIPELINE_TIMEOUT_S,
) -> list[dict[str, Any]]:
    """Ingest and curate new footage (on the Ray cluster at ``ray_address`` when given) and rebuild the
    training buckets, holding the cluster's concurrency slot throughout."""
    if ray_address:
        get_run_logger().info("curation runs on the Ray cluster at %s", ray_address)
    with _cluster_slot(concurrency_limit, slot_timeout_seconds):
        return _run_sequence(pipelines, project_dir, env, _with_ray(params, ray_address), runner, retries,
                             retry_delay_seconds, timeout_seconds)


@flow(name="weekly-fine-tune", log_prints=True)
def training_flow(
    project_dir: str | None = None,
    env: str | None = None,
    pipelines: list[str] = list(TRAINING_PIPELINES),  # noqa: B006
    params: dict[str, Any] | None = None,
    runner: str = "subprocess",
    retries: int | None = None,
    retry_delay_seconds: float | None = None,
    concurrency_limit: str | None = CLUSTER_LIMIT,
    slot_timeout_seconds: float | None = None,
    timeout_seconds: float | None = None,
) -> list[dict[str, Any]]:
    """Fine-tune through the three training stages, then evaluate and export the model, holding the
    cluster's concurrency slot throughout."""
    with _cluster_slot(concurrency_limit, slot_timeout_seconds):
        return _run_sequence(pipelines, project_dir, env, params, runner, retries, retry_delay_seconds,
                             timeout_seconds)


if __name__ == "__main__":
    # ad-hoc: python pipelines/flows.py ingestion curation  (runs in Prefect's ephemeral mode)
    kedro_flow(pipelines=sys.argv[1:] or list(CURATION_PIPELINES))
