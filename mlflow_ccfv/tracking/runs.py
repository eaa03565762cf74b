"""The MLflow run a command writes to, inside or outside ``mlflow run``."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def command_run(run_name: str) -> Iterator:
    """Start the run a step (pretrain, finetune, report, study) logs its own parameters to.

    - inside an active run (e.g. a study): a nested child run;
    - under ``mlflow run`` (``MLFLOW_RUN_ID`` set, no active run): MLflow already created a run for the
      entry point and logged the entry point's string parameters there, and a run's parameters cannot
      change; that run is resumed as the parent and the step gets a child run;
    - otherwise a new top-level run in the current experiment.
    """
    import mlflow

    outer = mlflow.start_run() if mlflow.active_run() is None and os.environ.get("MLFLOW_RUN_ID") else None
    try:
        with mlflow.start_run(run_name=run_name, nested=mlflow.active_run() is not None) as run:
            yield run
    finally:
        if outer is not None:
            mlflow.end_run()
