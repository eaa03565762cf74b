"""``mlflow-ccfv study``: leave-one-task-out over the synthetic family (+ BRATS as an extra source)."""

from __future__ import annotations

import click
from click.core import ParameterSource

from mlflow_ccfv.cli.base import (
    STUDY_EXPERIMENT,
    CCFVCommand,
    IntTuple,
    OptionalInt,
    check_tracking_server,
    data_root_option,
    device_option,
    exit_on_input_error,
    experiment_option,
    ray_options,
    steps_options,
)
from mlflow_ccfv.options import split_list

__all__ = ["study"]


@click.command(cls=CCFVCommand)
@data_root_option(default="data/synthetic", help_text="Where the synthetic family is (generated there if missing).")
@click.option(
    "--n-cases",
    "n_cases",
    default=50,
    type=click.IntRange(2, 10_000),
    show_default=True,
    help="Cases per synthetic task (80/20: 10 held out).",
)
@click.option(
    "--shape",
    default="64,64,48",
    type=IntTuple(length=3, minimum=8, maximum=1024),
    show_default=True,
    help="Synthetic volume shape in voxels (8-1024 a side).",
)
@click.option(
    "--brats", default="", help="BRATS folder (MSD layout) added as a source, FLAIR channel only; empty: none."
)
@click.option("--architectures", default="UNet,UNETR", show_default=True, help="Architectures of the bank.")
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
@click.option(
    "--seeds",
    default="0,1,2",
    type=IntTuple(minimum=0, maximum=2**32 - 1),
    show_default=True,
    help="Fine-tuning seeds per (model, target).",
)
@click.option(
    "--synthetic-seed",
    "synthetic_seed",
    default=0,
    type=click.IntRange(min=0),
    show_default=True,
    help="Seed of the synthetic family.",
)
@click.option(
    "--curve-every",
    "curve_every",
    default="250",
    type=OptionalInt(0),
    show_default=True,
    help="Source Dice every N pre-training steps (0 or empty: none).",
)
@click.option(
    "--early-step",
    "early_step",
    default="250",
    type=OptionalInt(1),
    show_default=True,
    help="Also register this step's checkpoint for --early-sources (empty: none).",
)
@click.option(
    "--early-sources",
    "early_sources",
    default="Task03,Task09",
    show_default=True,
    help="Sources with an early checkpoint.",
)
@steps_options(pretrain=2000, finetune=200)
@click.option("--bank", default="study", show_default=True, help="Bank tag of the study's models.")
@experiment_option(STUDY_EXPERIMENT)
@click.option(
    "--out-dir",
    "out_dir",
    default="",
    type=click.Path(file_okay=False),
    help="Also write the report's tables and plots here.",
)
@device_option()
@ray_options
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
    from mlflow_ccfv.networks import resolve_device
    from mlflow_ccfv.pipelines.executors import make_executor
    from mlflow_ccfv.pipelines.study import evidence_summary, print_summary, run_cli_workflow, study_config
    from mlflow_ccfv.pipelines.study_config import StudyBudget, StudySettings, SyntheticSettings

    ctx = click.get_current_context()

    def given(name: str) -> bool:
        return ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP)

    def make():
        if options["preset"]:
            from mlflow_ccfv.pipelines.benchmark import REAL_PRESET, imported_bundle_model, real_benchmark_config
            from mlflow_ccfv.tracking.registry import version_uri

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
            synthetic=SyntheticSettings(options["n_cases"], options["shape"], options["synthetic_seed"]),
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
