"""dvc.yaml against the project: its stages are the Kedro pipelines, its dependencies cover the code each
pipeline runs, its metrics and plots are the files the pipelines write; and the DVC workflow itself
(`dvc repro`, `dvc exp run -S`, `dvc metrics diff`, `dvc exp show`, `dvc plots show`) in a real
`git clone` of this repository's committed tree, on shortened parameters.
"""

from __future__ import annotations

import ast
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
STAGES = ["ingestion", "curation", "bucketing", "autoencoder", "stage1", "stage2", "stage3", "evaluation",
          "export"]
TRAINING = ["stage1", "stage2", "stage3"]
# generic helpers every module uses (key checking, package docstring): not a reason to rerun a stage
NOT_DEPENDENCIES = {"src/opensora_mlops/__init__.py", "src/opensora_mlops/config.py"}
# a package's docstring-only __init__ is imported with every module in it; one with code counts
EMPTY_INIT = re.compile(r'\A\s*(""".*?"""|\'\'\'.*?\'\'\')?\s*\Z', re.S)


def _dvc_yaml() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())


def _paths(entries: list) -> list[str]:
    return [entry if isinstance(entry, str) else next(iter(entry)) for entry in entries]


def _options(entries: list) -> dict[str, dict]:
    return {path: (entry[path] if isinstance(entry, dict) else {}) for entry, path in zip(entries, _paths(entries))}


def _git(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=60)


# ---------------------------------------------------------------------------------------- the graph
def test_stages_are_the_pipelines_in_order():
    stages = _dvc_yaml()["stages"]
    assert list(stages) == STAGES
    for name, stage in stages.items():
        assert stage["cmd"] == f"kedro run --pipelines={name}"
    for name in TRAINING:
        params = stages[name]["params"][0]["conf/base/parameters_training.yml"]
        assert params == ["training_shared", name]
    # each stage reads the previous one's model; export reads what evaluation scored
    assert {"data/06_models/stage1.json", "data/06_models/stage1"} <= set(stages["stage2"]["deps"])
    assert {"data/06_models/stage2.json", "data/06_models/stage2"} <= set(stages["stage3"]["deps"])
    assert "data/08_reporting/evaluation/metrics.json" in stages["export"]["deps"]


def test_code_dependencies_are_committed_files():
    """A dependency git does not track is missing from every fresh clone, and `dvc repro` stops there."""
    if _git("rev-parse", "--git-dir").returncode != 0:
        pytest.fail("the DVC tests need the repository's git metadata (run them from a git checkout)")
    for name, stage in _dvc_yaml()["stages"].items():
        for dep in stage["deps"]:
            if dep.startswith("data/"):
                continue
            assert (ROOT / dep).exists(), f"{name}: dependency {dep} does not exist"
            assert _git("ls-files", "--", dep).stdout.strip(), f"{name}: dependency {dep} is not tracked by git"


def _module_file(module: str) -> Path | None:
    base = SRC.joinpath(*module.split("."))
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def _imported_modules(path: Path) -> set[str]:
    found: set[str] = set()
    for item in ast.walk(ast.parse(path.read_text())):
        if isinstance(item, ast.ImportFrom) and item.module and item.module.startswith("opensora_mlops"):
            found.add(item.module)
            found.update(f"{item.module}.{alias.name}" for alias in item.names
                         if _module_file(f"{item.module}.{alias.name}"))
        elif isinstance(item, ast.Import):
            found.update(alias.name for alias in item.names if alias.name.startswith("opensora_mlops"))
    return found


def _code_closure(*modules: str) -> set[str]:
    """Every project source file that ``modules`` (a package stands for all its modules) import,
    transitively, including imports inside functions."""
    pending: set[str] = set()
    for name in modules:
        folder = SRC.joinpath(*name.split("."))
        pending |= {f"{name}.{p.stem}" for p in folder.glob("*.py")} if folder.is_dir() else {name}
    seen: set[str] = set()
    files: set[str] = set()
    while pending:
        module = pending.pop()
        if module in seen:
            continue
        seen.add(module)
        path = _module_file(module)
        if path is not None and not (path.name == "__init__.py" and EMPTY_INIT.match(path.read_text())):
            files.add(path.relative_to(ROOT).as_posix())
            pending |= _imported_modules(path)
    return files


@pytest.mark.parametrize("stage", STAGES)
def test_dependencies_cover_the_code_the_pipeline_runs(stage):
    """Change a module a pipeline imports and DVC must rerun that pipeline's stage."""
    deps = [d.rstrip("/") for d in _dvc_yaml()["stages"][stage]["deps"] if not d.startswith("data/")]
    from opensora_mlops.pipelines.dvc_reports import report_pipelines

    modules = [f"opensora_mlops.pipelines.{'training' if stage in TRAINING else stage}"]
    if stage in report_pipelines():
        modules.append("opensora_mlops.pipelines.dvc_reports")
    missing = sorted(f for f in _code_closure(*modules) - NOT_DEPENDENCIES
                     if not any(f == d or f.startswith(d + "/") for d in deps))
    assert not missing, f"{stage} runs code dvc.yaml does not list as its dependency: {missing}"


def _covered_parameters(stage: str) -> list[str]:
    """The parameter keys dvc.yaml makes ``stage`` depend on: a whole file's top-level keys, or the keys
    listed under it."""
    covered = []
    for entry in _dvc_yaml()["stages"][stage].get("params", []):
        for file, keys in (entry.items() if isinstance(entry, dict) else [(entry, None)]):
            covered += list(keys) if keys else list(yaml.safe_load((ROOT / file).read_text()) or {})
    return covered


@pytest.mark.parametrize("stage", STAGES)
def test_parameter_dependencies_cover_the_parameters_the_pipeline_reads(stage):
    """Change a parameter a pipeline's nodes read and DVC must rerun that pipeline's stage."""
    from kedro.framework.startup import bootstrap_project

    from opensora_mlops.pipeline_registry import register_pipelines

    bootstrap_project(ROOT)
    read = sorted({name.removeprefix("params:") for name in register_pipelines()[stage].inputs()
                   if name.startswith("params:")})
    covered = _covered_parameters(stage)
    missing = [key for key in read
               if not any(key == c or key.startswith(c + ".") or c.startswith(key + ".") for c in covered)]
    assert read and not missing, f"{stage} reads parameters dvc.yaml does not list: {missing}"


def _catalog_paths(names: list[str]) -> list[str]:
    from kedro.config import OmegaConfigLoader
    from kedro.io import DataCatalog

    loader = OmegaConfigLoader(conf_source=str(ROOT / "conf"), base_env="base", default_run_env="base")
    catalog = DataCatalog.from_config(loader["catalog"])
    return [Path(str(catalog.get(name)._filepath)).as_posix() for name in names]


def test_metrics_and_plots_are_the_files_each_pipeline_reports_to():
    """Each stage declares exactly the metrics/plot files its pipeline's report nodes write, outside the
    git-ignored data/ tree and uncached, so git versions them and DVC can compare revisions."""
    from opensora_mlops.pipelines.dvc_reports import TAG, add_dvc_reports, report_pipelines

    config = _dvc_yaml()
    reports = report_pipelines()
    declared_plots: set[str] = set()
    for name, stage in config["stages"].items():
        outputs = sorted(o for n in (reports[name].nodes if name in reports else []) for o in n.outputs)
        written = set(_catalog_paths(outputs))
        metrics = _options(stage.get("metrics", []))
        plots = {p for p, o in _options(stage["outs"]).items() if p.startswith("plots/")}
        assert set(metrics) | plots == written, name
        for path, options in {**metrics, **{p: _options(stage["outs"])[p] for p in plots}}.items():
            assert options.get("cache") is False, f"{path}: a git-versioned file is not DVC-cached"
            assert not path.startswith("data/")
            assert _git("check-ignore", "-q", path).returncode == 1, f"{path} is git-ignored"
        declared_plots |= plots
    for entry in config["plots"]:
        (key, spec), = entry.items()
        files = set(spec["y"]) if isinstance(spec.get("y"), dict) else {key}
        assert files <= declared_plots, f"plot {key} draws files no stage writes: {files - declared_plots}"
    assert _git("check-ignore", "-q", "data/01_raw/x.mp4").returncode == 0
    # the report nodes read only what their pipelines produce, and MLflow hooks skip them
    from kedro.pipeline import Pipeline

    from opensora_mlops.pipeline_registry import discover_pipelines
    from opensora_mlops.pipelines.training.pipeline import create_stage_pipelines

    plain = {**discover_pipelines(), **create_stage_pipelines()}
    for name, report in reports.items():
        produced = plain[name].all_outputs()
        for item in report.nodes:
            assert TAG in item.tags
            assert set(item.inputs) <= produced, f"{item.name} reads {set(item.inputs) - produced}"
    assert isinstance(add_dvc_reports(plain)["training"], Pipeline)


def test_curation_and_latent_caches_survive_a_rerun():
    """Folders that are caches with their own content keys are kept when their stage reruns."""
    stages = _dvc_yaml()["stages"]
    kept = {"curation": ["data/02_intermediate/curation_partitions", "data/03_primary/clips"],
            **{s: [f"data/05_model_input/{s}_latents", f"data/06_models/{s}"] for s in TRAINING}}
    for name, paths in kept.items():
        outs = _options(stages[name]["outs"])
        for path in paths:
            assert outs[path].get("persist") is True, f"{name}: {path} is not persist: true"


# ------------------------------------------------------------------------ the workflow, for real
# Shortened parameters: a corpus of two single-shot clips, one two-shot video and an image, 144p buckets of one sample, two
# optimizer steps per stage, one evaluation prompt of two frames.
SHORT = {
    "parameters_ingestion.yml": {"ingestion": {"progress": False, "synthetic": {
        "num_single_shot": 2, "single_shot_duration_seconds": [2.0, 2.0],
        "num_videos": 1, "num_large": 0, "num_images": 1, "duration_seconds": [3.0, 3.0],
        "shots_per_video": [2, 2],
        "defects": {"static": 0, "text": 0, "dark": 0, "blurred": 0, "zero_bytes": 1, "truncated": 0,
                    "not_video": 0}}}},
    # every clip passes: this test is about DVC, not about where curation's thresholds stand
    "parameters_curation.yml": {"curation": {"scoring": {"ocr_detector": "classical"}, "stages": {
        s: {"aes_min": None, "flow_min": None, "flow_max": None, "ocr_max": None, "duration_min": None,
            "num_frames_min": None, "resolution_min": None} for s in TRAINING}}},
    "parameters_bucketing.yml": {"bucketing": {"stages": {
        s: {"bucket_config": {"144p": {1: [1.0, 1], 8: [1.0, 1]}}} for s in TRAINING}}},
    "parameters_autoencoder.yml": {"autoencoder": {"steps": 2, "warmup_steps": 0, "max_clips": 2, "frames_per_clip": 2}},
    "parameters_training.yml": {
        "training_shared": {"sample_every": 0, "ckpt_every": 2, "validation": {"timesteps": [500]}},
        **{s: {"training": {"max_steps": 2}} for s in TRAINING}},
    "parameters_evaluation.yml": {"evaluation": {
        "max_prompts": 1, "samples_per_prompt": 1, "training_prompts": 0, "progress": False,
        "statistics": {"resamples": 50}, "generation": {"num_frames": 2, "steps": 2, "batch_size": 2},
        "real_clips": {"max_clips": 1, "max_frames": 4},
        "validation": {"max_clips": 1, "timesteps_per_range": 1, "num_ranges": 2}}},
    "parameters_export.yml": {"export": {"write_v1_1": False}},
}
REPLACED = ("bucket_config",)  # replaced whole, not merged key by key


def _merge(base: dict, override: dict) -> dict:
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict) and key not in REPLACED:
            _merge(base[key], value)
        else:
            base[key] = value
    return base


def _env() -> dict[str, str]:
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "DVC_NO_ANALYTICS": "1", "OPENSORA_MLFLOW": "0", "OMP_NUM_THREADS": "1",
            "GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@example.com",
            "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@example.com"}


def _run(args: list[str], cwd: Path, timeout: float = 1800) -> str:
    """Run a command in its own process group; the limit only catches a hang (a loaded machine is slow),
    and on it the whole group goes, the `kedro run` under `dvc repro` included."""
    process = subprocess.Popen(args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env=_env(), start_new_session=True)
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"{' '.join(args)} ran over {timeout} s:\n{output[-4000:]}")
    assert process.returncode == 0, f"{' '.join(args)} failed ({process.returncode}):\n{output[-4000:]}"
    return output


def _dvc(*args: str, cwd: Path) -> str:
    return _run([sys.executable, "-m", "dvc", *args], cwd)


def _dvc_json(*args: str, cwd: Path):
    done = subprocess.run([sys.executable, "-m", "dvc", *args, "--json"], cwd=cwd, capture_output=True,
                          text=True, env=_env(), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def _ran(output: str) -> list[str]:
    return re.findall(r"Running stage '([^']+)'", output)


def _mtimes(folder: Path) -> dict[str, int]:
    return {p.relative_to(folder).as_posix(): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_repro_and_an_experiment_in_a_fresh_clone(tmp_path):
    from opensora_mlops.pipelines.demo import record_dvc_lock

    clone = tmp_path / "clone"
    _run(["git", "clone", "--quiet", str(ROOT), str(clone)], tmp_path)
    assert not (clone / "data").exists()  # the pipelines make their folders; git holds no placeholders
    for name, override in SHORT.items():
        path = clone / "conf" / "base" / name
        path.write_text(yaml.safe_dump(_merge(yaml.safe_load(path.read_text()), override), sort_keys=False))
    _run(["git", "commit", "--quiet", "-am", "shortened parameters"], clone)

    assert _ran(_dvc("repro", cwd=clone)) == STAGES
    assert _dvc_json("status", cwd=clone) == {}
    assert "Data and pipelines are up to date" in _dvc("repro", "--dry", cwd=clone)
    # the metrics and plot tables are ordinary files for git to commit beside dvc.lock
    status = _run(["git", "status", "--porcelain"], clone)
    assert {"dvc.lock", "metrics/", "plots/"} <= {line[3:] for line in status.splitlines()}, status
    baseline = json.loads((clone / "metrics/stage3.json").read_text())
    assert baseline["training"]["steps"] == 2 and baseline["validation"]["val_loss"] > 0
    assert all(isinstance(v, int | float) for v in _flatten(json.loads((clone / "metrics/evaluation.json").read_text())))
    _run(["git", "add", "dvc.lock", "metrics", "plots"], clone)
    _run(["git", "commit", "--quiet", "-m", "baseline run"], clone)
    shown = _dvc_json("plots", "show", cwd=clone)
    assert not shown.get("errors"), shown["errors"]
    assert len(shown["data"]) == len(_dvc_yaml()["plots"]) and all(shown["data"].values())

    # what each kind of change would rerun (no run needed to know)
    params = clone / "conf/base/parameters_training.yml"
    original = params.read_text()
    values = yaml.safe_load(original)
    values["training_shared"]["seed"] = 7
    params.write_text(yaml.safe_dump(values, sort_keys=False))
    assert set(_dvc_json("status", cwd=clone)) == set(TRAINING)
    params.write_text(original)
    assert _dvc_json("status", cwd=clone) == {}

    # an experiment on a stage-3 parameter reruns stage 3 and what follows, reusing its latent cache
    latents = clone / "data/05_model_input/stage3_latents"
    partitions = clone / "data/02_intermediate/curation_partitions"
    before = _mtimes(latents), _mtimes(partitions)
    output = _dvc("exp", "run", "-S", "conf/base/parameters_training.yml:stage3.training.lr=0.02", cwd=clone)
    assert _ran(output) == ["stage3", "evaluation", "export"]
    assert (_mtimes(latents), _mtimes(partitions)) == before  # not deleted, not encoded again
    diff = _dvc_json("metrics", "diff", cwd=clone)
    assert "metrics/stage3.json" in diff and "metrics/evaluation.json" in diff
    assert "training.last_loss" in diff["metrics/stage3.json"]
    assert not {"metrics/ingestion.json", "metrics/curation.json", "metrics/stage1.json",
                "metrics/stage2.json"} & set(diff)
    rows = _dvc_json("exp", "show", cwd=clone)
    experiments = [rev for row in rows for exp in row.get("experiments") or [] for rev in exp["revs"]]
    assert len(experiments) == 1
    data = experiments[0]["data"]
    assert data["params"]["conf/base/parameters_training.yml"]["data"]["stage3"]["training"]["lr"] == 0.02
    exp_loss = data["metrics"]["metrics/stage3.json"]["data"]["training"]["last_loss"]
    assert exp_loss == pytest.approx(diff["metrics/stage3.json"]["training.last_loss"]["new"])
    assert exp_loss != pytest.approx(baseline["training"]["last_loss"])

    # `make demo` runs the pipelines outside DVC, in a clone with no dvc.lock: recording the lock then
    # makes every stage up to date without running anything
    (clone / "dvc.lock").unlink()
    assert set(_dvc_json("status", cwd=clone)) == set(STAGES)
    assert record_dvc_lock(clone)
    assert _dvc_json("status", cwd=clone) == {}
    assert "Data and pipelines are up to date" in _dvc("repro", "--dry", cwd=clone)
    assert "lr: 0.02" in (clone / "dvc.lock").read_text()  # the parameters of the run that is there


def _flatten(values: dict):
    for value in values.values():
        if isinstance(value, dict):
            yield from _flatten(value)
        else:
            yield value
