"""``mlflow-ccfv log-dataset``: upload a target task folder as MLflow artifacts (MLproject entry point
``log_dataset``); prints the ``runs:/`` reference the other commands accept as ``--dataset``."""

from __future__ import annotations

import click

from mlflow_ccfv.cli import shared_options as shared
from mlflow_ccfv.cli.base import check_tracking_server, command, exit_on_input_error
from mlflow_ccfv.options import DATASET_EXPERIMENT

__all__ = ["log_dataset"]


@command()
@click.option("--dataset", required=True, help="The task folder: a name under --data-root (Task07) or a path.")
@shared.data_root_option()
@shared.bool_option("--verify", default=True, help="Run the dataset integrity check first.")
@click.option(
    "--experiment", default=DATASET_EXPERIMENT, show_default=True, help="Experiment holding the dataset runs."
)
def log_dataset(**options) -> None:
    """Upload dataset.json, imagesTr and labelsTr as artifacts of a dataset run, once per content digest."""
    from mlflow_ccfv.pipelines.dataset import log_dataset_folder

    with exit_on_input_error("log-dataset"):
        check_tracking_server()
        art = log_dataset_folder(
            options["dataset"],
            data_root=options["data_root"] or None,
            verify=options["verify"],
            experiment=options["experiment"] or DATASET_EXPERIMENT,
        )
    state = "already logged" if art.reused else "uploaded"
    click.echo(f"{art.name} ({state}, digest {art.digest[:12]}): {art.uri}")
