"""``mlflow-ccfv demo``: the whole loop on one synthetic target in minutes (the README's first command)."""

from __future__ import annotations

import click

from mlflow_ccfv.cli.base import CCFVCommand, exit_on_input_error
from mlflow_ccfv.options import split_list


@click.command(cls=CCFVCommand)
@click.option(
    "--data-root",
    "data_root",
    default="data",
    show_default=True,
    help="Where the synthetic tasks are generated (reused when present); score's default data root.",
)
@click.option("--target", default="Task09", show_default=True, help="Target task of the demo.")
@click.option("--sources", default="Task03,Task07,Task06", show_default=True, help="Pre-training sources.")
@click.option("--n-cases", "n_cases", default="8", show_default=True, help="Cases per synthetic task.")
@click.option(
    "--pretrain-steps", "pretrain_steps", default="150", show_default=True, help="Pre-training steps per model."
)
@click.option(
    "--finetune-steps", "finetune_steps", default="60", show_default=True, help="Fine-tuning steps per model."
)
@click.option(
    "--bank", default="default", show_default=True, help="Bank tag of the demo's models (score's default bank)."
)
@click.option(
    "--experiment",
    default="ccfv-demo",
    show_default=True,
    help="MLflow experiment (unless MLFLOW_EXPERIMENT_* or mlflow run chose one).",
)
@click.option("--out-dir", "out_dir", default="", help="Also write the report's tables and plots here.")
def demo(**options) -> None:
    """Synthesise data, pre-train a bank (UNet + UNETR per source, + random-init controls), score, fine-tune, report."""
    from mlflow_ccfv.pipelines.study import demo_config, print_summary, run_cli_workflow

    def make():
        return demo_config(
            options["data_root"],
            target=options["target"],
            sources=split_list(options["sources"]),
            n_cases=int(options["n_cases"]),
            pretrain_steps=int(options["pretrain_steps"]),
            finetune_steps=int(options["finetune_steps"]),
            bank=options["bank"],
        )

    with exit_on_input_error("demo"):
        result = run_cli_workflow(make, options["experiment"], options["out_dir"] or None)
    click.echo(print_summary(result, ui_hint=True))
