"""Bucketing pipeline: each stage's filtered clips -> bucket table, summary and data contract."""
