"""Exports of finished jobs and sweeps to the tools teams already run (MLflow)."""
