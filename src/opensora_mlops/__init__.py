"""opensora-mlops: Open-Sora 1.1 (ST-DiT-2) reproduced as pipelines as code.

The library (everything here except ``pipelines/``, ``settings.py``, ``pipeline_registry.py``,
``hooks.py`` and the CLI) never imports Kedro, MLflow or Prefect.
"""

__version__ = "0.1.0"
