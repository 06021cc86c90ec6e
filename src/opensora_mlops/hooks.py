"""Kedro hooks that track every ``kedro run`` in MLflow.

* one parent run per ``kedro run`` (run name = the pipeline names), one nested run per training stage
  (``stage1``, ``stage2``, ``stage3``) and per other namespaced pipeline: a stage's run holds only its
  own nodes (bucketing's per-stage nodes, although namespaced ``stage1`` …, go to a ``bucketing`` run);
  a namespace with a node that opens the nested run itself (tag ``mlflow_own_run``: evaluation's
  report logger, export's model registration) keeps that one run, and the hooks add to it afterwards;
  Kedro may run a stage's latent cache well before its training, so each nested run also gets
  ``node_seconds``, the time its own nodes took;
* parameters flattened (``training_shared.model.name``), per-stage settings on the nested runs;
* per-step metrics come from the training nodes' callback (loss, grad norm, lr, samples/s, tokens/s),
  counted from 1 in each stage; the hooks add ``global_step`` (the step counted across stages 1 → 3)
  to each stage run, so the compare view plots the stages one after another with ``global_step`` as
  x-axis, and the parent run gets the stages' ``loss`` at those global steps;
* each number once: a node's summary (``training_metrics``, ``validation_metrics``) is logged under
  its own key unless the node already logged that metric, and repeated on the parent run as
  ``<stage>.<key>``;
* artifacts: the resolved stage config, sample GIFs, each stage's final weights;
* tags: git commit (and whether the tree was dirty), data version (a hash of ``dvc.lock`` for the
  parent, the input table's content hash on each stage), the Kedro env and pipeline, and the process
  that owns the run: a run left ``RUNNING`` by a process that died without closing it (``kill -9``) is
  marked ``FAILED`` when the next ``kedro run`` starts;
* the experiment is a model-training one (``mlflow.experimentKind``), so the UI opens on its runs;
* a local SQLite store copied with its checkout (``mlruns/``) is re-pointed at the copy's own
  ``mlruns/artifacts`` (MLflow stores artifact locations as absolute paths), so the copy never writes
  into the original's folders.

Tracking URI: ``conf/<env>/mlflow.yml`` (``tracking_uri``), overridden by ``MLFLOW_TRACKING_URI``.
An http(s) server that does not answer is reported with a warning and the run goes to the local
store (``fallback_uri``, default ``sqlite:///mlruns/mlflow.db``): a run is never lost.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import socket
import sqlite3
import subprocess
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kedro.framework.hooks import hook_impl

logger = logging.getLogger(__name__)

MLFLOW_KEYS = ("tracking_uri", "artifact_location", "experiment_name", "fallback_uri", "log_weights", "enabled")
DEFAULT_FALLBACK = "sqlite:///mlruns/mlflow.db"
MAX_PARAM_LENGTH = 6000
DVC_REPORT_TAG = "dvc_report"  # opensora_mlops.pipelines.dvc_reports.TAG
TRAINING_TAG = "training"  # the training template's nodes (opensora_mlops.pipelines.training)
# a node that opens its namespace's nested run itself (evaluation's log_to_mlflow, export's
# register_model); the hooks open none for that namespace, so it has exactly one nested run
OWN_RUN_TAG = "mlflow_own_run"
STAGES = ("stage1", "stage2", "stage3")  # training stages, in the order their steps add up
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
OWNER_TAGS = ("opensora.host", "opensora.pid", "opensora.process_started")
EVENTS_FILE = "events.jsonl"  # the trainer's event log in each stage's run folder
_URIS_SET_HERE: set[str] = set()  # tracking URIs these hooks exported through mlflow.set_tracking_uri


def flatten_params(values: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested parameters -> ``{"a.b.c": "value"}`` with values stringified and clipped to MLflow's limit."""
    flat: dict[str, str] = {}
    for key, value in values.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            flat.update(flatten_params(value, name))
        else:
            text = str(value)
            flat[name] = text if len(text) <= MAX_PARAM_LENGTH else text[: MAX_PARAM_LENGTH - 3] + "..."
    return flat


def _absolute_sqlite(uri: str, root: Path) -> str:
    """``sqlite:///relative.db`` is resolved against the project root, not the caller's cwd."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        path = root / uri[len(prefix) :]
        path.parent.mkdir(parents=True, exist_ok=True)
        return prefix + str(path)
    return uri


def server_reachable(uri: str, timeout: float = 2.0) -> bool:
    """True when an http(s) MLflow server answers ``/health`` (local stores always count as reachable)."""
    if not uri.startswith(("http://", "https://")):
        return True
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as response:
            return 200 <= response.status < 500
    except (urllib.error.URLError, OSError, ValueError):
        return False


def resolve_tracking_uri(configured: str | None, root: Path, fallback: str = DEFAULT_FALLBACK) -> tuple[str, bool]:
    """(tracking URI to use, whether we fell back). ``MLFLOW_TRACKING_URI`` beats the config."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or configured or fallback
    if server_reachable(uri):
        return _absolute_sqlite(uri, root), False
    message = (f"MLflow tracking server {uri} is not reachable; logging this run to the local store {fallback} "
               "instead (sync it later with `mlflow` export tools)")
    warnings.warn(message, RuntimeWarning, stacklevel=2)
    logger.warning(message)
    return _absolute_sqlite(fallback, root), True


def git_commit(root: Path) -> tuple[str, bool]:
    """(commit hash or "unknown", dirty?)"""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10,
                             check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                capture_output=True, text=True, timeout=10, check=True).stdout
        return sha, bool(status.strip())
    except (OSError, subprocess.SubprocessError):
        return "unknown", False


def data_version(root: Path) -> str:
    """Content hash of ``dvc.lock`` (DVC's record of every stage's data hashes), if any."""
    lock = root / "dvc.lock"
    if not lock.exists():
        return "unversioned"
    return "dvc:" + hashlib.sha256(lock.read_bytes()).hexdigest()[:16]


def process_owner() -> dict[str, str]:
    """Tags naming this process, so a later run can tell whether it is still alive."""
    import psutil

    me = psutil.Process()
    return {"opensora.host": socket.gethostname(), "opensora.pid": str(me.pid),
            "opensora.process_started": f"{me.create_time():.3f}"}


def owner_alive(tags: Mapping[str, str]) -> bool | None:
    """Whether the process that opened a run (its :func:`process_owner` tags) still runs: ``None`` when
    the run names no owner or one on another host (nothing can be said), ``False`` when that pid is gone
    or now belongs to a process started at another time (the pid was reused)."""
    import psutil

    if tags.get("opensora.host") != socket.gethostname() or not tags.get("opensora.pid"):
        return None
    try:
        process = psutil.Process(int(tags["opensora.pid"]))
        started = process.create_time()
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:  # another user's process: it exists
        return True
    except ValueError:
        return None
    recorded = tags.get("opensora.process_started")
    return recorded is None or abs(started - float(recorded)) < 1.0


def fail_orphaned_runs(client, experiment_id: str) -> list[str]:
    """Mark ``FAILED`` every ``RUNNING`` run of the experiment whose process died without closing it
    (``kill -9``, a lost machine); returns their ids. Runs of live processes or other hosts stay."""
    failed = []
    runs = client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=5000)
    for run in runs:
        tags = run.data.tags
        if owner_alive(tags) is False:
            client.set_tag(run.info.run_id, "error", f"process {tags['opensora.pid']} on {tags['opensora.host']} "
                           "ended without closing this run (killed?); marked FAILED by the next kedro run")
            client.set_terminated(run.info.run_id, status="FAILED")
            failed.append(run.info.run_id)
    if failed:
        logger.warning("MLflow: marked %d run(s) FAILED whose process was killed: %s", len(failed), ", ".join(failed))
    return failed


# MLflow keeps artifact locations as absolute paths (it resolves relative ones when it stores them)
ARTIFACT_COLUMNS = (("experiments", "artifact_location"), ("runs", "artifact_uri"),
                    ("logged_models", "artifact_location"), ("model_versions", "storage_location"),
                    ("model_versions", "source"))


def relocate_local_store(db_path: Path, artifact_root: Path) -> int:
    """Re-point a SQLite store that was copied from another checkout at this one's artifact folder.

    Every experiment location that ends like ``artifact_root`` (``…/mlruns/artifacts``) but lies
    elsewhere - the checkout the store was copied from - is replaced by ``artifact_root``, in the
    experiments, their runs, logged models and model versions, so runs logged from the copy land in
    the copy. Returns the number of values changed (0 for a store in place or not made here)."""
    if not db_path.is_file():
        return 0
    target = artifact_root.resolve().as_uri()
    suffix = "/" + "/".join(artifact_root.resolve().parts[-2:])  # e.g. /mlruns/artifacts
    changed = 0
    with sqlite3.connect(db_path) as connection:
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "experiments" not in tables:
            return 0
        locations = {row[0] for row in connection.execute("SELECT artifact_location FROM experiments")
                     if row[0] and row[0].rstrip("/").endswith(suffix)}
        for old in sorted(locations):
            old = old.rstrip("/")
            if old == target:
                continue
            for table, column in ARTIFACT_COLUMNS:
                columns = ({row[1] for row in connection.execute(f"PRAGMA table_info({table})")}
                           if table in tables else set())
                if column not in columns:
                    continue
                cursor = connection.execute(
                    f"UPDATE {table} SET {column} = ? || substr({column}, ?) "
                    f"WHERE {column} = ? OR substr({column}, 1, ?) = ?",
                    (target, len(old) + 1, old, len(old) + 1, old + "/"))
                changed += cursor.rowcount
            logger.warning("MLflow store %s was copied from another checkout: artifact paths %s -> %s",
                           db_path, old, target)
    return changed


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI, else None."""
    prefix = "sqlite:///"
    return Path(uri[len(prefix):]) if uri.startswith(prefix) else None


class MLflowHooks:
    """Parent run per ``kedro run``, nested run per namespace (training stage)."""

    def __init__(self) -> None:
        self.settings: dict[str, Any] = {}
        self.params: dict[str, Any] = {}
        self.root = Path.cwd()
        self.env = "local"
        self.parent_run_id: str | None = None
        self.nested: dict[str, str] = {}
        self.own_runs: set[str] = set()
        self.step_offsets: dict[str, int] = {}
        self.node_seconds: dict[str, float] = {}
        self.node_started: dict[str, float] = {}
        self.owner: dict[str, str] = {}
        self.fell_back = False

    # ------------------------------------------------------------------ setup
    @hook_impl
    def after_context_created(self, context) -> None:
        self.root = Path(context.project_path)
        self.env = str(getattr(context, "env", None) or "local")
        try:
            settings = dict(context.config_loader["mlflow"])
        except KeyError:
            settings = {}
        from opensora_mlops.config import check_keys

        check_keys(settings, MLFLOW_KEYS, "mlflow.yml")
        self.settings = settings
        self.params = dict(context.params)

    def _timed(self, node) -> bool:
        """Nodes of a namespace count towards its nested run; the DVC report nodes only restate numbers
        the stage runs already hold, so they count for nothing."""
        return self.parent_run_id is not None and bool(node.namespace) and DVC_REPORT_TAG not in node.tags

    def _tracks(self, node) -> bool:
        """Timed nodes log into their namespace's nested run, which the hooks open, except in a namespace
        whose own node opens it (:data:`OWN_RUN_TAG`): there they run under the parent run, as that node
        expects, and the hooks find its run after the pipeline."""
        return self._timed(node) and self.run_name(node) not in self.own_runs

    def _enabled(self) -> bool:
        return bool(self.settings.get("enabled", True)) and os.environ.get("OPENSORA_MLFLOW", "1") != "0"

    # ------------------------------------------------------------------ pipeline
    @hook_impl
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline, catalog) -> None:
        if not self._enabled():
            return
        import mlflow

        # mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI: the value an earlier run in this process
        # left there is MLflow's echo of that run's store, not the user's choice for this project
        if os.environ.get("MLFLOW_TRACKING_URI") in _URIS_SET_HERE:
            os.environ.pop("MLFLOW_TRACKING_URI")
        uri, self.fell_back = resolve_tracking_uri(self.settings.get("tracking_uri"), self.root,
                                                   self.settings.get("fallback_uri", DEFAULT_FALLBACK))
        artifacts = self.settings.get("artifact_location", "mlruns/artifacts")
        store = sqlite_path(uri)
        if store is not None and "://" not in artifacts and store.resolve().is_relative_to(self.root.resolve()):
            relocate_local_store(store, self.root / artifacts)
        if os.environ.get("MLFLOW_TRACKING_URI") != uri:  # not the user's own setting: ours to forget
            _URIS_SET_HERE.add(uri)
        mlflow.set_tracking_uri(uri)
        name = self.settings.get("experiment_name", "opensora-mlops")
        experiment = mlflow.get_experiment_by_name(name)
        if experiment is None:
            location = artifacts if "://" in artifacts else (self.root / artifacts).resolve().as_uri()
            experiment_id = mlflow.create_experiment(name, artifact_location=location, tags=EXPERIMENT_KIND)
        else:
            experiment_id = experiment.experiment_id
            for key, value in EXPERIMENT_KIND.items():
                if experiment.tags.get(key) != value:
                    mlflow.MlflowClient().set_experiment_tag(experiment_id, key, value)
        mlflow.set_experiment(experiment_id=experiment_id)
        fail_orphaned_runs(mlflow.MlflowClient(), experiment_id)
        while mlflow.active_run() is not None:  # a run left open by an earlier session in this process
            mlflow.end_run()
        pipelines = run_params.get("pipeline_names") or [run_params.get("pipeline_name") or "__default__"]
        if isinstance(pipelines, str):
            pipelines = [pipelines]
        commit, dirty = git_commit(self.root)
        run = mlflow.start_run(run_name="kedro run " + ",".join(str(p) for p in pipelines))
        self.parent_run_id = run.info.run_id
        self.nested = {}
        self.own_runs = {self.run_name(n) for n in pipeline.nodes if n.namespace and OWN_RUN_TAG in n.tags}
        self.step_offsets = {}
        self.node_seconds = {}
        self.node_started = {}
        self.owner = process_owner()
        mlflow.set_tags({**self.owner,
            "mlflow.source.git.commit": commit, "git_commit": commit, "git_dirty": str(dirty),
            "data_version": data_version(self.root), "kedro_env": str(run_params.get("env") or self.env),
            "kedro_pipeline": ",".join(str(p) for p in pipelines),
            "kedro_session_id": str(run_params.get("session_id") or run_params.get("run_id") or ""),
            "tracking_fallback": str(self.fell_back),
        })  # fmt: skip
        used = {n[len("params:"):].split(".")[0] for n in pipeline.inputs() | _all_inputs(pipeline)
                if n.startswith("params:")}
        flat = flatten_params({k: v for k, v in self.params.items() if k in used or not used})
        _log_params(flat)

    @hook_impl
    def after_pipeline_run(self, run_params: dict[str, Any], run_result, pipeline, catalog) -> None:
        if self.parent_run_id is None:
            return
        import mlflow

        while mlflow.active_run() is not None:
            mlflow.end_run()
        client = mlflow.MlflowClient()
        self._adopt_own_runs(client)
        # Kedro may run a stage's first node (its latent cache) long before the others (stage 3's cache
        # right after bucketing), so a run's start-to-end time includes other stages' work: its own is this
        for name, seconds in self.node_seconds.items():
            if name in self.nested:
                client.log_batch(self.nested[name], metrics=[_metric("node_seconds", round(seconds, 3), 0)])
        self.parent_run_id = None

    def _adopt_own_runs(self, client) -> None:
        """The nested run a namespace's own node opened (run name and ``namespace`` tag = the namespace,
        parent = this run) gets what the hooks give every nested run: the namespace's parameters
        (those the node did not log) and, in :meth:`after_pipeline_run`, ``node_seconds``. A
        namespace whose node opened no run (tracking off in that node, registration disabled) gets none."""
        for name in sorted(self.own_runs):
            runs = client.search_runs(
                [client.get_run(self.parent_run_id).info.experiment_id],
                filter_string=f"tags.mlflow.parentRunId = '{self.parent_run_id}' and tags.namespace = '{name}'",
                order_by=["attributes.start_time DESC"], max_results=1)
            if not runs:
                continue
            run = runs[0]
            self.nested[name] = run.info.run_id
            if isinstance(self.params.get(name), Mapping):
                fresh = {k: v for k, v in flatten_params(self.params[name]).items() if k not in run.data.params}
                items = sorted(fresh.items())
                for start in range(0, len(items), 100):  # MLflow accepts at most 100 params per batch
                    client.log_batch(run.info.run_id, params=[_param(k, v) for k, v in items[start:start + 100]])

    @hook_impl
    def on_pipeline_error(self, error: Exception, run_params: dict[str, Any], pipeline, catalog) -> None:
        if self.parent_run_id is None:
            return
        import mlflow

        while mlflow.active_run() is not None:
            mlflow.end_run(status="FAILED")
        self.parent_run_id = None

    # ------------------------------------------------------------------ nodes
    @staticmethod
    def run_name(node) -> str:
        """The nested run a namespaced node logs into: its namespace, except that another pipeline's
        per-stage template (bucketing's nodes in ``stage1`` …) gets that pipeline's run, so that a stage's
        run holds only the stage's own nodes."""
        namespace = node.namespace.split(".")[0]
        if namespace in STAGES and TRAINING_TAG not in node.tags:
            others = sorted(set(node.tags) - {DVC_REPORT_TAG})
            return others[0] if others else namespace
        return namespace

    def _stage_offset(self, stage: str, catalog) -> int:
        """Steps the stages before ``stage`` trained: their model manifests' ``steps``."""
        from kedro.io import DatasetError

        offset = 0
        for earlier in STAGES[: STAGES.index(stage)]:
            name = f"{earlier}.model"
            try:
                manifest = catalog.load(name) if catalog.exists(name) else None
            except (DatasetError, OSError, ValueError) as error:  # only the offset is lost
                logger.warning("MLflow: cannot read %s for the global step offset (%s); counting it as 0",
                               name, error)
                manifest = None
            if isinstance(manifest, Mapping):
                offset += int(manifest.get("steps") or 0)
        return offset

    @hook_impl
    def before_node_run(self, node, catalog, inputs: dict[str, Any], is_async: bool, run_id: str) -> None:
        if self._timed(node):
            self.node_started[node.name] = time.monotonic()
        if not self._tracks(node):
            return
        import mlflow

        name = self.run_name(node)
        run_id_ = self.nested.get(name)
        if run_id_ is None:
            run = mlflow.start_run(run_name=name, nested=True, tags={**self.owner, "namespace": name})
            self.nested[name] = run.info.run_id
            if name in STAGES:
                settings = {**(self.params.get("training_shared") or {}),
                            **((self.params.get(name) or {}).get("training") or {})}
                _log_params(flatten_params(settings))
            elif isinstance(self.params.get(name), Mapping):
                _log_params(flatten_params(self.params[name]))
        else:
            mlflow.start_run(run_id=run_id_, nested=True)
        if name in STAGES and f"{name}.model" in node.outputs and name not in self.step_offsets:
            self.step_offsets[name] = offset = self._stage_offset(name, catalog)
            mlflow.set_tag("global_step_offset", str(offset))

    @hook_impl
    def after_node_run(self, node, catalog, inputs: dict[str, Any], outputs: dict[str, Any], is_async: bool,
                       run_id: str) -> None:
        if not self._timed(node):
            return
        name = self.run_name(node)
        started = self.node_started.pop(node.name, None)
        if started is not None:
            self.node_seconds[name] = self.node_seconds.get(name, 0.0) + time.monotonic() - started
        if not self._tracks(node):
            return
        import mlflow

        run = mlflow.active_run()
        manifest = outputs.get(f"{name}.model")
        if isinstance(manifest, Mapping) and manifest.get("final_dir") and self.settings.get("log_weights", True):
            mlflow.log_artifacts(manifest["final_dir"], artifact_path="weights")
        if isinstance(manifest, Mapping) and manifest.get("run_dir") and name in self.step_offsets:
            run_dir = Path(manifest["run_dir"])
            self._log_global_steps(run.info.run_id, run_dir if run_dir.is_absolute() else self.root / run_dir,
                                   self.step_offsets[name])
        summaries = {key: value for key, value in outputs.items() if key.endswith("_metrics")
                     and isinstance(value, Mapping)}
        if summaries:
            client = mlflow.MlflowClient()
            logged = set(client.get_run(run.info.run_id).data.metrics)
            numbers: dict[str, float] = {}
            for summary in summaries.values():
                numbers.update({k: float(v) for k, v in summary.items()
                                if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)})
            # a number the node logged itself (val_loss, samples_per_s per step) is not logged again
            fresh = {k: v for k, v in numbers.items() if k not in logged}
            if fresh:
                mlflow.log_metrics(fresh)
            if numbers and self.parent_run_id is not None:
                client.log_batch(self.parent_run_id,
                                 metrics=[_metric(f"{name}.{k}", v, 0) for k, v in sorted(numbers.items())])
        mlflow.end_run()

    def _log_global_steps(self, stage_run_id: str, run_dir: Path, offset: int) -> None:
        """``global_step`` at every step of the stage run (its x-axis across stages) and the stage's loss
        on the parent run at those global steps (the three stages' curves one after another)."""
        import mlflow

        from opensora_mlops.reporting import loss_curve

        events = run_dir / EVENTS_FILE
        try:
            curve = loss_curve(events)
        except (OSError, ValueError) as error:  # tracking must not fail the run it tracks
            logger.warning("MLflow: no global steps for %s (%s)", run_dir, error)
            return
        client = mlflow.MlflowClient()
        steps = [int(s) for s in curve["step"]]
        global_steps = [_metric("global_step", float(offset + s), s) for s in steps]
        parent_loss = [_metric("loss", float(loss), offset + s) for s, loss in zip(steps, curve["loss"])]
        for start in range(0, len(steps), 1000):  # MLflow takes at most 1000 metrics per batch
            client.log_batch(stage_run_id, metrics=global_steps[start : start + 1000])
            if self.parent_run_id is not None:
                client.log_batch(self.parent_run_id, metrics=parent_loss[start : start + 1000])

    @hook_impl
    def on_node_error(self, error: Exception, node, catalog, inputs: dict[str, Any], is_async: bool,
                      run_id: str) -> None:
        if not self._tracks(node):
            return
        import mlflow

        run = mlflow.active_run()
        if run is not None and run.info.run_id != self.parent_run_id:
            mlflow.set_tag("error", f"{type(error).__name__}: {error}"[:5000])
            mlflow.end_run(status="FAILED")


def _metric(key: str, value: float, step: int):
    from mlflow.entities import Metric

    return Metric(key, value, int(time.time() * 1000), step)


def _param(key: str, value: str):
    from mlflow.entities import Param

    return Param(key, value)


def _all_inputs(pipeline) -> set[str]:
    names: set[str] = set()
    for n in pipeline.nodes:
        names.update(n.inputs)
    return names


def _log_params(flat: dict[str, str]) -> None:
    import mlflow

    items = sorted(flat.items())
    for start in range(0, len(items), 100):  # MLflow accepts at most 100 params per batch
        mlflow.log_params(dict(items[start : start + 100]))


class ShortErrorHooks:
    """An expected error (``opensora_mlops.errors.EXPECTED_ERRORS``: bad settings, a broken data
    contract, footage without captions, a stage without a full batch …) ends ``kedro run`` with its
    message and the failed node, not a traceback through Kedro's runner. It works through the
    interpreter's last step: the error leaves ``kedro run`` uncaught and ``sys.excepthook`` prints it,
    so this hook replaces the excepthook (Kedro's rich one) for that one error only; any other
    exception, and every error with ``OPENSORA_TRACEBACK=1``, keeps the full traceback."""

    def __init__(self) -> None:
        self.failed_node: str | None = None

    @hook_impl
    def on_node_error(self, error: Exception, node, catalog, inputs: dict[str, Any], is_async: bool,
                      run_id: str) -> None:
        self.failed_node = node.name

    @hook_impl
    def on_pipeline_error(self, error: Exception, run_params: dict[str, Any], pipeline, catalog) -> None:
        import sys

        from opensora_mlops.errors import expected_error, short_message, want_traceback

        user_error = expected_error(error)
        if user_error is None or want_traceback():
            return
        message = short_message(user_error, f"node '{self.failed_node}'" if self.failed_node else None)
        previous = sys.excepthook

        def print_short(kind, value, traceback) -> None:
            if value is error or expected_error(value) is user_error:
                print(f"kedro run: {message}", file=sys.stderr)
            else:
                previous(kind, value, traceback)

        sys.excepthook = print_short
