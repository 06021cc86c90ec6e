"""Kedro project settings."""

from kedro.config import OmegaConfigLoader

from opensora_mlops.hooks import MLflowHooks, ShortErrorHooks

CONFIG_LOADER_CLASS = OmegaConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    # conf/*/mlflow.yml: tracking URI, experiment name (read by the MLflow hooks)
    "config_patterns": {"mlflow": ["mlflow*", "mlflow*/**"]},
    # an environment (conf/cluster, conf/local) overrides single parameter keys, not whole blocks
    "merge_strategy": {"parameters": "soft"},
}
# MLflow tracking: one parent run per `kedro run`, one nested run per training stage (see hooks.py);
# expected errors (opensora_mlops.errors) end a run with their message instead of a traceback
HOOKS: tuple = (MLflowHooks(), ShortErrorHooks())
# Tracking is this project's own hooks; a kedro-mlflow installed in the same environment must not
# open a second set of runs.
DISABLE_HOOKS_FOR_PLUGINS: tuple = ("kedro-mlflow", "kedro_mlflow")
