"""Kedro project settings."""

from kedro.config import OmegaConfigLoader

CONFIG_LOADER_CLASS = OmegaConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    # conf/*/mlflow.yml: tracking URI, experiment name (read by the MLflow hooks)
    "config_patterns": {"mlflow": ["mlflow*", "mlflow*/**"]},
}
HOOKS: tuple = ()
