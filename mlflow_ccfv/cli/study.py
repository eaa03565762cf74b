"""``mlflow-ccfv study``: leave-one-task-out over the synthetic family (+ BRATS as an extra source)."""

from __future__ import annotations

import click
from click.core import ParameterSource

from mlflow_ccfv.cli import shared_options as shared
from mlflow_ccfv.cli.base import STUDY_EXPERIMENT, check_tracking_server, command, exit_on_input_error
from mlflow_ccfv.cli.types import Architecture
from mlflow_ccfv.options import split_list

__all__ = ["study"]


@command()
@shared.data_root_option(
    default="data/synthetic", help_text="Where the synthetic family is (generated there if missing)."
)
@shared.n_cases_option("Cases per synthetic task (80/20: 10 held out).")
@shared.shape_option("Synthetic volume shape in voxels")
@click.option(
    "--brats", default="", help="BRATS folder (MSD layout) added as a source, FLAIR channel only; empty: none."
)
@click.option(
    "--architectures",
    default="UNet,UNETR",
    show_default=True,
    type=Architecture(many=True),
    help="Architectures of the bank.",
)
@click.option(
    "--targets",
    default="",
    help="Comma-separated targets: synthetic task names, MSD folder paths or runs:/<run_id>/<folder> "
    "(a dataset logged with log-dataset; default: all five).",
)
@click.option(
    "--sources",
    default="",
    help="Comma-separated sources: task names or MSD folders, PATH:0 keeps channel 0 (default: the family + targets).",
)
@shared.seeds_option("Fine-tuning seeds per (model, target).")
@shared.seed_option("--synthetic-seed", "Seed of the synthetic family.", maximum=None)
@shared.optional_int_option(
    "--curve-every", "Source Dice every N pre-training steps (0 or empty: none).", default="250", minimum=0
)
@shared.optional_int_option(
    "--early-step",
    "Also register this step's checkpoint for --early-sources (empty: none).",
    default="250",
    minimum=1,
)
@click.option("--early-sources", default="Task03,Task09", show_default=True, help="Sources with an early checkpoint.")
@shared.steps_options(pretrain=2000, finetune=200)
@shared.bank_option("Bank tag of the study's models.", default="study")
@shared.experiment_option(STUDY_EXPERIMENT)
@shared.folder_option("--out-dir", "Also write the report's tables and plots here.")
@shared.device_option()
@shared.ray_options()
@click.option(
    "--preset",
    default="",
    type=click.Choice(["", "real-hippocampus"]),
    help="real-hippocampus: the pre-registered real-data benchmark (MSD hippocampus split by subject, "
    "docs/study.md); its own sources, targets, architectures and budgets, unless --pretrain-steps, "
    "--finetune-steps, --seeds or --bank are given; data under --data-root (default data/benchmark).",
)
def study(**options) -> None:
    """Run the leave-one-task-out study: pre-train every source per architecture, then per target score the
    bank, fine-tune it and report."""
    from mlflow_ccfv.data.synthetic import SyntheticSettings
    from mlflow_ccfv.networks import resolve_device
    from mlflow_ccfv.pipelines.executors import make_executor
    from mlflow_ccfv.pipelines.study import evidence_summary, print_summary, run_cli_workflow, study_config
    from mlflow_ccfv.pipelines.study_config import StudyBudget, StudySettings

    ctx = click.get_current_context()

    def given(name: str) -> bool:
        return ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP)

    def make():
        if options["preset"]:
            from mlflow_ccfv.pipelines.benchmark import REAL_PRESET, imported_bundle_model, real_benchmark_config
            from mlflow_ccfv.tracking.search import version_uri

            chosen = {k: options[k] for k in ("pretrain_steps", "finetune_steps", "seeds", "bank") if given(k)}
            root = options["data_root"] if given("data_root") else "data/benchmark"
            config = real_benchmark_config(
                root, bank=chosen.pop("bank", REAL_PRESET), device=options["device"], **chosen
            )
            config.extra_models = (version_uri(imported_bundle_model(config, root)),)
            return config
        settings = StudySettings(
            targets=tuple(split_list(options["targets"])) or None,
            sources=tuple(split_list(options["sources"])) or None,
            brats=options["brats"] or None,
            architectures=tuple(split_list(options["architectures"])),
            bank=options["bank"],
            curve_every=options["curve_every"] or 0,
            early_step=options["early_step"],
            early_sources=tuple(split_list(options["early_sources"])),
            device=options["device"],
            synthetic=SyntheticSettings(
                n_cases=options["n_cases"], shape=options["shape"], seed=options["synthetic_seed"]
            ),
            budget=StudyBudget(options["pretrain_steps"], options["finetune_steps"], seeds=options["seeds"]),
        )
        return study_config(options["data_root"], settings)

    with exit_on_input_error("study"):
        resolve_device(options["device"])
        check_tracking_server(options["experiment"], STUDY_EXPERIMENT)
        executor = make_executor(
            options["executor"],
            address=options["ray_address"] or None,
            num_cpus=options["num_cpus"],
            num_gpus=options["num_gpus"],
        )
        try:
            result = run_cli_workflow(make, options["out_dir"] or None, executor)
        finally:
            executor.close()
    click.echo(print_summary(result))
    click.echo(evidence_summary(result))
