"""``mlflow-ccfv demo``: the whole loop on one synthetic target in minutes (the README's first command)."""

from __future__ import annotations

import click

from mlflow_ccfv.cli.base import (
    CCFVCommand,
    check_tracking_server,
    data_root_option,
    device_option,
    exit_on_input_error,
    steps_options,
)
from mlflow_ccfv.options import split_list


@click.command(cls=CCFVCommand)
@data_root_option(
    default="data",
    help_text="Where the synthetic tasks are generated (reused when present); score's default data root.",
)
@click.option("--target", default="Task09", show_default=True, help="Target task of the demo.")
@click.option("--sources", default="Task03,Task07,Task06", show_default=True, help="Pre-training sources.")
@click.option(
    "--n-cases",
    "n_cases",
    default=8,
    type=click.IntRange(2, 10_000),
    show_default=True,
    help="Cases per synthetic task.",
)
@steps_options(pretrain=150, finetune=60)
@click.option(
    "--bank", default="default", show_default=True, help="Bank tag of the demo's models (score's default bank)."
)
@click.option(
    "--experiment",
    default="ccfv-demo",
    show_default=True,
    help="MLflow experiment (unless MLFLOW_EXPERIMENT_* or mlflow run chose one).",
)
@click.option(
    "--out-dir",
    "out_dir",
    default="",
    type=click.Path(file_okay=False),
    help="Also write the report's tables and plots here.",
)
@device_option()
def demo(**options) -> None:
    """Run the whole loop on one synthetic target: synthesise data, pre-train a bank (UNet + UNETR per source,
    + random-init controls), score, fine-tune, report."""
    from mlflow_ccfv.networks import resolve_device
    from mlflow_ccfv.pipelines.study import demo_config, print_summary, run_cli_workflow

    def make():
        return demo_config(
            options["data_root"],
            target=options["target"],
            sources=split_list(options["sources"]),
            n_cases=options["n_cases"],
            pretrain_steps=options["pretrain_steps"],
            finetune_steps=options["finetune_steps"],
            bank=options["bank"],
            device=options["device"],
        )

    with exit_on_input_error("demo"):
        resolve_device(options["device"])
        check_tracking_server()
        result = run_cli_workflow(make, options["experiment"], options["out_dir"] or None)
    click.echo(print_summary(result, ui_hint=True))
