"""Project pipelines: every folder under ``pipelines/`` with a ``create_pipeline``, plus the training
template's stages ``stage1``, ``stage2`` and ``stage3`` (namespaced instances of one template)."""

from __future__ import annotations

import importlib
import importlib.resources
import importlib.util
import warnings

from kedro.pipeline import Pipeline

from opensora_mlops.pipelines.dvc_reports import add_dvc_reports
from opensora_mlops.pipelines.training.pipeline import create_stage_pipelines

# `kedro run` with no --pipelines chains these (Kedro orders nodes by their data anyway); any other
# discovered pipeline (evaluation, export, …) follows them.
DEFAULT_ORDER = ("ingestion", "curation", "bucketing", "autoencoder", "stage1", "stage2", "stage3")
# Kedro 1.x warns (once per process) when a node reads or writes a dotted name outside its own top-level
# namespace, to catch names that only look namespaced. Here every such name is a real hand-over between
# namespaces (stage 1's ``stage1.model`` into stage 2, curation's ``stageN.filtered_clips`` into
# bucketing, ``stage3.model`` into evaluation and export), so the registry silences that one warning;
# tests/test_pipeline_namespaces.py checks the stricter rule instead: a dotted name's prefix is a
# namespace that nodes live in, and a node writes into its own namespace only.
DOTTED_NAME_WARNING = r"One or more dataset names contain '\.' characters"


def discover_pipelines() -> dict[str, Pipeline]:
    """Kedro's ``find_pipelines`` rule with the project's convention: ``create_pipeline`` may live in a
    pipeline package's ``__init__`` (Kedro's lookup) or in its ``pipeline.py``. Import errors are raised,
    not swallowed. (Kedro 1.7's own ``find_pipelines`` filters by the CLI's ``--pipelines`` names, which
    would skip the packages the namespaced ``stage1``/``stage2``/``stage3`` are built from.)"""
    import opensora_mlops.pipelines as package

    names = sorted(
        p.name for p in importlib.resources.files(package).iterdir()
        if p.is_dir() and not p.name.startswith((".", "_"))
    )  # fmt: skip
    found: dict[str, Pipeline] = {}
    for name in names:
        module = importlib.import_module(f"{package.__name__}.{name}")
        if not hasattr(module, "create_pipeline"):
            if importlib.util.find_spec(f"{package.__name__}.{name}.pipeline") is None:
                # a package being written (no pipeline.py yet) is not a pipeline; say so, do not fail
                warnings.warn(f"pipelines/{name} has no create_pipeline() yet (no pipeline.py); skipped",
                              stacklevel=2)
                continue
            module = importlib.import_module(f"{package.__name__}.{name}.pipeline")
        if not hasattr(module, "create_pipeline"):
            raise KeyError(f"pipelines/{name}/pipeline.py has no create_pipeline()")
        pipeline = module.create_pipeline()
        if not isinstance(pipeline, Pipeline):
            raise TypeError(f"pipelines/{name}: create_pipeline() returned {type(pipeline).__name__}, not a Pipeline")
        found[name] = pipeline
    return found


def register_pipelines() -> dict[str, Pipeline]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=DOTTED_NAME_WARNING, category=UserWarning)
        return _register_pipelines()


def _register_pipelines() -> dict[str, Pipeline]:
    pipelines = discover_pipelines()
    pipelines.update(create_stage_pipelines())  # "training" (discovered) = all three stages together
    pipelines = add_dvc_reports(pipelines)  # each pipeline ends by writing its DVC metrics/plots files
    ordered = [name for name in DEFAULT_ORDER if name in pipelines]
    others = [name for name in pipelines if name not in DEFAULT_ORDER and name != "training"]
    pipelines["__default__"] = sum((pipelines[name] for name in ordered + others), Pipeline([]))
    return pipelines
