"""Scheduled Prefect deployments of the Kedro flows on a process work pool.

* ``nightly-curation`` — :func:`pipelines.flows.curation_flow` every night at 02:00 (new footage is
  ingested, curated and bucketed);
* ``weekly-fine-tune`` — :func:`pipelines.flows.training_flow` every Sunday at 04:00 (three training
  stages, evaluation, export).

The flow code is the project directory itself (Prefect local storage): a process worker on the GPU
host runs ``pipelines/flows.py:<flow>`` from there. Set up once, then register::

    prefect server start                                   # or PREFECT_API_URL of an existing server
    prefect work-pool create --type process gpu-pool
    prefect worker start --pool gpu-pool                   # on each GPU host, in the project's venv
    python pipelines/deployments.py [--env cluster] [--work-pool gpu-pool] [--timezone Europe/Berlin]

Or, without a work pool, ``python pipelines/deployments.py --serve`` serves both deployments from this
process (it runs the scheduled flows itself).

Registering also creates the global concurrency limit ``gpu-cluster`` (1 slot) that both flows hold
for their whole run (``prefect gcl create gpu-cluster --limit 1`` does the same by hand), so a nightly
curation and a weekly training run never share the cluster; each deployment also runs at most one of
its own flow runs at a time. With ``--env cluster`` the nightly curation gets the Ray cluster address of
``conf/cluster/parameters_curation.yml`` as its ``ray_address`` parameter (shown in the Prefect UI).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import flow as prefect_flow
from prefect.deployments.runner import RunnerDeployment
from prefect.schedules import Cron

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_WORK_POOL = "gpu-pool"
sys.path.insert(0, str(PROJECT_ROOT))
from pipelines.flows import CLUSTER_LIMIT, cluster_ray_address  # noqa: E402


@dataclass(frozen=True)
class DeploymentSpec:
    name: str
    entrypoint: str  # relative to the project root
    cron: str
    description: str
    tags: tuple[str, ...]


DEPLOYMENTS: tuple[DeploymentSpec, ...] = (
    DeploymentSpec(
        name="nightly-curation",
        entrypoint="pipelines/flows.py:curation_flow",
        cron="0 2 * * *",
        description="Ingest, curate and bucket new footage every night.",
        tags=("curation", "nightly"),
    ),
    DeploymentSpec(
        name="weekly-fine-tune",
        entrypoint="pipelines/flows.py:training_flow",
        cron="0 4 * * 0",
        description="Fine-tune stage 1-3 on the curated data, evaluate and export, every Sunday.",
        tags=("training", "weekly", "gpu"),
    ),
)


def build_deployments(
    project_dir: str | Path = PROJECT_ROOT,
    work_pool: str | None = DEFAULT_WORK_POOL,
    env: str | None = None,
    timezone: str = "UTC",
    runner: str = "subprocess",
) -> list[RunnerDeployment]:
    """The deployment objects (nothing is sent to a server).

    ``work_pool`` None builds deployments for ``serve`` (no pool); otherwise they target that process
    pool and carry the project directory as their code location.
    """
    project_dir = Path(project_dir).resolve()
    deployments = []
    for spec in DEPLOYMENTS:
        # load the flow from the project directory so the deployment records it as its code location
        loaded = prefect_flow.from_source(source=str(project_dir), entrypoint=spec.entrypoint)
        parameters: dict[str, Any] = {"project_dir": str(project_dir), "runner": runner}
        if env:
            parameters["env"] = env
            address = cluster_ray_address(project_dir, env) if spec.name == "nightly-curation" else None
            if address:
                parameters["ray_address"] = address
        deployments.append(
            loaded.to_deployment(
                name=spec.name,
                schedule=Cron(spec.cron, timezone=timezone),
                parameters=parameters,
                description=spec.description,
                tags=list(spec.tags),
                work_pool_name=work_pool,
                concurrency_limit=1,  # a deployment's own runs never overlap either
            )
        )
    return deployments


def ensure_cluster_limit(name: str = CLUSTER_LIMIT, limit: int = 1) -> bool:
    """Create the global concurrency limit the flows hold, unless it exists; True when created."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
            return False
        except ObjectNotFound:
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=limit))
            return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work-pool", default=DEFAULT_WORK_POOL, help="process work pool name")
    parser.add_argument("--env", default=None, help="Kedro environment, e.g. cluster")
    parser.add_argument("--timezone", default="UTC", help="IANA timezone of the cron schedules")
    parser.add_argument("--project-dir", default=str(PROJECT_ROOT))
    parser.add_argument("--serve", action="store_true", help="serve from this process instead of a work pool")
    args = parser.parse_args(argv)

    from prefect import deploy, serve

    ensure_cluster_limit()
    if args.serve:
        serve(*build_deployments(args.project_dir, work_pool=None, env=args.env, timezone=args.timezone))
        return 0
    ids = deploy(
        *build_deployments(args.project_dir, work_pool=args.work_pool, env=args.env, timezone=args.timezone),
        work_pool_name=args.work_pool,
        build=False,
        push=False,
    )
    print(f"registered {len(ids)} deployments on work pool {args.work_pool!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
