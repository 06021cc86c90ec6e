"""The ``ray`` curation executor on a local Ray cluster (2 CPUs, 127.0.0.1) started and stopped here:
the same clip table as the local executor (library and ``kedro run --params curation.executor=ray``),
and a worker process killed mid-run loses no finished video (the retry, or a rerun, does the rest)."""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import pandas as pd
import pytest
import ray

from opensora_mlops.config import ConfigError
from opensora_mlops.curation.curate import CurationConfig, scene_partition, source_tasks
from opensora_mlops.curation.partitions import PartitionStore, PartitionTask, run_partitioned
from opensora_mlops.curation.ray_executor import PartitionFailures, RayConfig
from opensora_mlops.curation.synthetic import ShotSpec
from test_curation_pipeline import REPO, _config, _curate, _video


@pytest.fixture(scope="module")
def cluster():
    """A local 2-CPU Ray cluster bound to 127.0.0.1 for this module's tests."""
    if ray.is_initialized():  # pragma: no cover - another module left one running
        ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
             log_to_driver=False)
    # the workers cannot import this test module: its work-function wrapper travels by value
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield ray
    ray.shutdown()


SHOTS = [
    [(ShotSpec("red", "circle", "navy", "right", "quickly"), 24), (ShotSpec("yellow", "square", "gray", "up", "quickly"), 50)],
    [(ShotSpec("cyan", "triangle", "maroon", "left", "slowly"), 30), (ShotSpec("green", "square", "navy", "up", "slowly"), 22)],
    [(ShotSpec("white", "circle", "black", "down", "quickly"), 30)],
    [(ShotSpec("magenta", "square", "gray", "left", "quickly"), 26), (ShotSpec("blue", "triangle", "maroon", "right", "slowly"), 26)],
]


@pytest.fixture
def raw(tmp_path):
    return pd.DataFrame([_video(tmp_path / "src" / f"v{i}.mp4", shots) for i, shots in enumerate(SHOTS)])


def _on_ray(config: CurationConfig, **ray_options) -> CurationConfig:
    return replace(config, executor="ray", ray=RayConfig(**{"max_in_flight": 2, **ray_options}))


def _comparable(table: pd.DataFrame) -> pd.DataFrame:
    """A clip table without its absolute clip paths (each run has its own clips folder)."""
    return table.drop(columns=["path"]).sort_values("clip_id").reset_index(drop=True)


def test_ray_executor_gives_the_same_clip_table_as_local(tmp_path, raw, cluster):
    _, local, local_dropped, _ = _curate(raw, _config(tmp_path / "local"))
    config = _on_ray(_config(tmp_path / "ray"))  # the partitions through fsspec, as on shared storage
    config = replace(config, partitions=replace(config.partitions, root=f"file://{tmp_path / 'ray' / 'parts'}"))
    _, on_ray, ray_dropped, steps = _curate(raw, config)
    assert [(s.computed, s.reused) for s in steps] == [(4, 0), (4, 0), (4, 0)]
    assert len(on_ray) == len(local) == 8  # v0: 1 + 2 (50 frames split), v1: 2, v2: 1, v3: 2
    # the same clips, frames and scores, bit for bit
    pd.testing.assert_frame_equal(_comparable(on_ray), _comparable(local), check_exact=True)
    pd.testing.assert_frame_equal(ray_dropped, local_dropped)
    assert on_ray["path"].map(lambda p: Path(p).is_file()).all()
    # the partitions are the local executor's: a rerun on either executor computes nothing
    _, again, _, steps = _curate(raw, config)
    assert [(s.computed, s.reused) for s in steps] == [(0, 4), (0, 4), (0, 4)]
    _, local_again, _, steps = _curate(raw, replace(config, executor="local"))
    assert [(s.computed, s.reused) for s in steps] == [(0, 4), (0, 4), (0, 4)]
    pd.testing.assert_frame_equal(local_again, on_ray)


@dataclass(frozen=True)
class DiesOnce:
    """Scene detection that kills its worker process (``os._exit``) the first time it meets ``victim``
    (a marker file remembers it across processes), like a node lost or an out-of-memory kill."""

    victim: str
    marker: str

    def __call__(self, payload):
        if Path(payload["row"]["path"]).name == self.victim and not Path(self.marker).exists():
            Path(self.marker).touch()
            os._exit(1)
        return scene_partition(payload)


def _scene_tasks(raw, config):
    tasks, _ = source_tasks(raw, config)
    return [PartitionTask(t.name, {"row": t.row, "scenes": asdict(config.scenes), "clips": asdict(config.clips)})
            for t in tasks]


def test_killed_worker_loses_no_finished_video_and_the_rerun_does_the_rest(tmp_path, raw, cluster):
    config = _config(tmp_path)
    tasks = _scene_tasks(raw, config)
    victim = next(t for t in tasks if Path(t.payload["row"]["path"]).name == "v1.mp4")
    store = PartitionStore(config.partitions.root, "scenes")
    work = DiesOnce("v1.mp4", str(tmp_path / "died"))

    # no retries: the run fails naming the lost video, after the other three were stored
    with pytest.raises(PartitionFailures) as info:
        run_partitioned(tasks, work, store, desc="scene detection", progress=False, executor="ray",
                        ray=RayConfig(max_in_flight=2, max_retries=0))
    assert list(info.value.failures) == [victim.name]
    assert "WorkerCrashedError" in info.value.failures[victim.name]
    assert (tmp_path / "died").exists()
    assert store.names() == sorted(t.name for t in tasks if t.name != victim.name)
    # the rerun computes only the lost video and reuses the rest
    rerun = run_partitioned(tasks, work, store, desc="scene detection", progress=False, executor="ray",
                            ray=RayConfig(max_in_flight=2, max_retries=0))
    assert rerun.computed == [victim.name] and len(rerun.reused) == 3

    # with a retry the same crash costs one more attempt and the run completes
    (tmp_path / "died").unlink()
    store2 = PartitionStore(str(tmp_path / "parts2"), "scenes")
    retried = run_partitioned(tasks, work, store2, desc="scene detection", progress=False, executor="ray",
                              ray=RayConfig(max_in_flight=2, max_retries=1))
    assert (tmp_path / "died").exists() and store2.names() == sorted(t.name for t in tasks)
    pd.testing.assert_frame_equal(retried.kept, rerun.kept)


def test_ray_config_errors_are_config_errors():
    with pytest.raises(ConfigError, match="curation.executor"):
        CurationConfig.from_dict({"executor": "dask"})
    with pytest.raises(ConfigError, match="max_in_flight"):
        CurationConfig.from_dict({"ray": {"max_in_flight": 0}})
    with pytest.raises(ConfigError, match="curation.ray"):
        CurationConfig.from_dict({"ray": {"adress": "auto"}})
    assert CurationConfig.from_dict({"executor": "ray", "ray": {"address": "auto"}}).ray.address == "auto"


def test_gpu_step_refuses_a_cluster_without_gpus(tmp_path, cluster):
    store = PartitionStore(str(tmp_path / "parts"), "scores")
    with pytest.raises(ConfigError, match="has 0"):
        run_partitioned([PartitionTask("x", {})], scene_partition, store, progress=False, executor="ray",
                        ray=RayConfig(), gpu=True)


# --------------------------------------------------------------------------------------------- Kedro
LOOSE_STAGES = {s: {"aes_min": 1.0, "flow_min": None, "ocr_max": None, "duration_min": 0.5, "num_frames_min": None,
                    "resolution_min": None} for s in ("stage1", "stage2", "stage3")}


@pytest.fixture
def project(tmp_path, monkeypatch, raw):
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    shutil.copytree(REPO / "conf" / "base", tmp_path / "conf" / "base")
    (tmp_path / "conf" / "local").mkdir()
    (tmp_path / "src").mkdir(exist_ok=True)
    (tmp_path / "data" / "01_raw").mkdir(parents=True)
    raw.to_parquet(tmp_path / "data" / "01_raw" / "raw_metadata.parquet", index=False)
    monkeypatch.chdir(tmp_path)  # another folder than the cluster's: relative paths still resolve here
    monkeypatch.setenv("OPENSORA_MLFLOW", "0")
    return tmp_path


def _kedro_curation(project, curation):
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    bootstrap_project(project)
    params = {"curation": {"stages": LOOSE_STAGES, **curation}}
    with KedroSession.create(project_path=project, runtime_params=params) as session:
        session.run(pipeline_names=["curation"])
    return pd.read_parquet(project / "data/04_feature/clip_metadata.parquet")


def test_kedro_curation_with_the_ray_executor_matches_local(project, cluster):
    local = _kedro_curation(project, {"partitions": {"progress": False}})
    # `kedro run --pipelines=curation --params curation.executor=ray` (other folders, so nothing is reused)
    on_ray = _kedro_curation(project, {"executor": "ray", "partitions": {
        "progress": False, "root": "data/02_intermediate/ray_partitions", "clips_dir": "data/03_primary/ray_clips"}})
    assert len(local) == 7  # conf/base: max_seconds 4, so no scene is split
    assert on_ray["path"].str.startswith("data/03_primary/ray_clips").all()
    assert on_ray["path"].map(lambda p: (project / p).is_file()).all()
    pd.testing.assert_frame_equal(_comparable(on_ray), _comparable(local), check_exact=True)


def test_base_and_cluster_curation_parameters_parse():
    from kedro.config import OmegaConfigLoader

    def curation(env):
        loader = OmegaConfigLoader(str(REPO / "conf"), base_env="base", default_run_env="local", env=env)
        return CurationConfig.from_dict(loader["parameters"]["curation"])

    base, cluster = curation(None), curation("cluster")
    assert base.executor == "local" and base.ray == RayConfig()
    assert cluster.executor == "ray" and cluster.ray.address == "ray://ray-head:10001"
    assert cluster.scoring.device == "cuda" and cluster.partitions.workers == base.partitions.workers
