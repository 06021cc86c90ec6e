"""Evaluation pipeline: VBench-style scores, prompt adherence, validation loss by timestep, report."""
