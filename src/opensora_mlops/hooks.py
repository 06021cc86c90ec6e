"""Kedro hooks that track every ``kedro run`` in MLflow.

* one parent run per ``kedro run`` (run name = the pipeline names), one nested run per namespace
  (``stage1``, ``stage2``, ``stage3`` …): nodes of a namespace log into its nested run;
* parameters flattened (``training_shared.model.name``), per-stage settings on the nested runs;
* per-step metrics come from the training nodes' callback (loss, grad norm, lr, samples/s, tokens/s);
* artifacts: the resolved stage config, sample GIFs, each stage's final weights;
* tags: git commit (and whether the tree was dirty), data version (a hash of ``dvc.lock`` for the
  parent, the input table's content hash on each stage), the Kedro env and pipeline.

Tracking URI: ``conf/<env>/mlflow.yml`` (``tracking_uri``), overridden by ``MLFLOW_TRACKING_URI``.
An http(s) server that does not answer is reported with a warning and the run goes to the local
store (``fallback_uri``, default ``sqlite:///mlruns/mlflow.db``): a run is never lost.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
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


class MLflowHooks:
    """Parent run per ``kedro run``, nested run per namespace (training stage)."""

    def __init__(self) -> None:
        self.settings: dict[str, Any] = {}
        self.params: dict[str, Any] = {}
        self.root = Path.cwd()
        self.env = "local"
        self.parent_run_id: str | None = None
        self.nested: dict[str, str] = {}
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

    def _tracks(self, node) -> bool:
        """Nodes of a namespace log into its nested run; the DVC report nodes only restate numbers the
        stage runs already hold, so they log nothing."""
        return self.parent_run_id is not None and bool(node.namespace) and DVC_REPORT_TAG not in node.tags

    def _enabled(self) -> bool:
        return bool(self.settings.get("enabled", True)) and os.environ.get("OPENSORA_MLFLOW", "1") != "0"

    # ------------------------------------------------------------------ pipeline
    @hook_impl
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline, catalog) -> None:
        if not self._enabled():
            return
        import mlflow

        uri, self.fell_back = resolve_tracking_uri(self.settings.get("tracking_uri"), self.root,
                                                   self.settings.get("fallback_uri", DEFAULT_FALLBACK))
        mlflow.set_tracking_uri(uri)
        name = self.settings.get("experiment_name", "opensora-mlops")
        if mlflow.get_experiment_by_name(name) is None:
            artifacts = self.settings.get("artifact_location", "mlruns/artifacts")
            if "://" not in artifacts:
                artifacts = (self.root / artifacts).resolve().as_uri()
            mlflow.create_experiment(name, artifact_location=artifacts)
        mlflow.set_experiment(name)
        while mlflow.active_run() is not None:  # a run left open by an earlier session in this process
            mlflow.end_run()
        pipelines = run_params.get("pipeline_names") or [run_params.get("pipeline_name") or "__default__"]
        if isinstance(pipelines, str):
            pipelines = [pipelines]
        commit, dirty = git_commit(self.root)
        run = mlflow.start_run(run_name="kedro run " + ",".join(str(p) for p in pipelines))
        self.parent_run_id = run.info.run_id
        self.nested = {}
        mlflow.set_tags({
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
        self.parent_run_id = None

    @hook_impl
    def on_pipeline_error(self, error: Exception, run_params: dict[str, Any], pipeline, catalog) -> None:
        if self.parent_run_id is None:
            return
        import mlflow

        while mlflow.active_run() is not None:
            mlflow.end_run(status="FAILED")
        self.parent_run_id = None

    # ------------------------------------------------------------------ nodes
    @hook_impl
    def before_node_run(self, node, catalog, inputs: dict[str, Any], is_async: bool, run_id: str) -> None:
        if not self._tracks(node):
            return
        import mlflow

        namespace = node.namespace.split(".")[0]
        run_id_ = self.nested.get(namespace)
        if run_id_ is None:
            run = mlflow.start_run(run_name=namespace, nested=True)
            self.nested[namespace] = run.info.run_id
            settings = {**(self.params.get("training_shared") or {}),
                        **((self.params.get(namespace) or {}).get("training") or {})}
            if namespace in self.params:
                _log_params(flatten_params(settings if settings else self.params[namespace]))
            mlflow.set_tag("namespace", namespace)
        else:
            mlflow.start_run(run_id=run_id_, nested=True)

    @hook_impl
    def after_node_run(self, node, catalog, inputs: dict[str, Any], outputs: dict[str, Any], is_async: bool,
                       run_id: str) -> None:
        if not self._tracks(node):
            return
        import mlflow

        namespace = node.namespace.split(".")[0]
        manifest = outputs.get(f"{namespace}.model")
        if isinstance(manifest, Mapping) and manifest.get("final_dir") and self.settings.get("log_weights", True):
            mlflow.log_artifacts(manifest["final_dir"], artifact_path="weights")
        for name, value in outputs.items():
            if name.endswith("_metrics") and isinstance(value, Mapping):
                mlflow.log_metrics({f"{name.split('.')[-1]}.{k}": float(v) for k, v in value.items()
                                    if isinstance(v, int | float) and not isinstance(v, bool)})
        mlflow.end_run()

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
