"""Export pipeline: self-contained model directory, Open-Sora 1.1 checkpoint, MLflow pyfunc registration."""
