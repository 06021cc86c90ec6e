"""Prefect orchestration of the Kedro pipelines: flows (:mod:`pipelines.flows`) and scheduled
deployments on a process work pool (:mod:`pipelines.deployments`)."""
