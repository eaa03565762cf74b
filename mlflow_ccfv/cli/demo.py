"""``mlflow-ccfv demo``: the whole loop on one synthetic target in minutes (the README's first command)."""

from __future__ import annotations

from pathlib import Path

import click

from mlflow_ccfv.cli import shared_options as shared
from mlflow_ccfv.cli.base import DEMO_EXPERIMENT, check_tracking_server, command, exit_on_input_error
from mlflow_ccfv.options import split_list

__all__ = ["demo"]


@command()
@shared.data_root_option(
    help_text="Where the synthetic tasks are generated (reused when present); score's default data root.",
)
@click.option("--target", default="Task10", show_default=True, help="Target task of the demo.")
@click.option(
    "--sources",
    default="",
    help="Tasks generated beside the target (default Task07); with --from-scratch, the pre-training sources "
    "(default Task03,Task07,Task06).",
)
@shared.n_cases_option("Cases per synthetic task (80/20 split: 50 hold out 10).")
@shared.seeds_option("Fine-tuning seeds per model.")
@shared.bool_option(
    "--from-scratch",
    help="true: pre-train the bank here (--sources x UNet,UNETR for --pretrain-steps) instead of registering the "
    "shipped pre-trained bank (slower, and at this budget the models barely learn their sources).",
)
@shared.folder_option("--bank-dir", "A bank folder written by export-bank to use instead of the shipped one.")
@shared.steps_options(pretrain=150, finetune=150)
@shared.bank_option("Bank tag of the demo's models (score's default bank).")
@shared.experiment_option(DEMO_EXPERIMENT)
@shared.folder_option("--out-dir", "Also write the report's tables and plots here.")
@shared.device_option()
def demo(**options) -> None:
    """Run the whole loop on one synthetic target: register the shipped pre-trained bank (digests verified)
    and a random-init control per architecture, synthesise the target, score, fine-tune with 3 seeds,
    report the ranking, its intervals, the selection value and whether pre-training mattered."""
    from mlflow_ccfv.data.synthetic import SyntheticSettings
    from mlflow_ccfv.networks import resolve_device
    from mlflow_ccfv.pipelines.study import demo_config, demo_evidence, print_summary, run_cli_workflow
    from mlflow_ccfv.pipelines.study_config import DemoSettings, StudyBudget

    if options["from_scratch"] and options["bank_dir"]:
        raise click.UsageError("--from-scratch pre-trains the bank; --bank-dir registers one: give one of them.")

    def make():
        demo = DemoSettings(
            target=options["target"],
            sources=tuple(split_list(options["sources"])) or None,
            bank=options["bank"],
            device=options["device"],
            from_scratch=options["from_scratch"],
            bank_folder=Path(options["bank_dir"]) if options["bank_dir"] else None,
            synthetic=SyntheticSettings(n_cases=options["n_cases"]),
            budget=StudyBudget(options["pretrain_steps"], options["finetune_steps"], seeds=options["seeds"]),
        )
        return demo_config(options["data_root"], demo)

    with exit_on_input_error("demo"):
        resolve_device(options["device"])
        check_tracking_server(options["experiment"], DEMO_EXPERIMENT)
        result = run_cli_workflow(make, options["out_dir"] or None)
    click.echo(print_summary(result, ui_hint=True))
    click.echo(demo_evidence(result))
