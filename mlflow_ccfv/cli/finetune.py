"""``mlflow-ccfv finetune``: fine-tune a bank version on a target and record its held-out Dice."""

from __future__ import annotations

import click

from mlflow_ccfv.cli.base import (
    CCFVCommand,
    IntTuple,
    allow_pickle_option,
    bool_option,
    check_tracking_server,
    data_root_option,
    device_option,
    exit_on_input_error,
    experiment_option,
    target_option,
    train_options,
)

__all__ = ["finetune"]


@click.command(cls=CCFVCommand)
@click.option("--model", required=True, help="models:/<name>/<version> (or models:/<name>@<alias>).")
@target_option()
@data_root_option()
@click.option(
    "--split-seed",
    "split_seed",
    default=0,
    type=click.IntRange(min=0, max=2**32 - 1),
    show_default=True,
    help="Seed of the 80/20 split.",
)
@click.option(
    "--overlap",
    default=0.5,
    type=click.FloatRange(min=0, max=1, max_open=True),
    show_default=True,
    help="Sliding-window overlap at evaluation, in [0, 1).",
)
@bool_option("--force", help="true: fine-tune even if this budget's Dice is tagged.")
@click.option(
    "--seeds",
    default="",
    type=IntTuple(minimum=0, maximum=2**32 - 1, empty_as_tuple=True),
    help="Comma-separated fine-tuning seeds, e.g. 0,1,2 (Dice mean and sd); default: --seed.",
)
@click.option(
    "--checkpoint-every",
    "checkpoint_every",
    default=50,
    type=click.IntRange(min=0),
    show_default=True,
    help="Save the training state every N steps (0: never); a rerun after a kill resumes from it.",
)
@allow_pickle_option
@train_options(steps=100, seed=0)
@device_option()
@experiment_option()
def finetune(**options) -> None:
    """Fine-tune a bank version on a target (all pre-trained weights but the last convolution, nothing
    frozen) and record its Dice (MONAI DiceMetric) on the held-out 20%."""
    from mlflow_ccfv.cli.base import train_config_from_options
    from mlflow_ccfv.pipelines.finetune import finetune_version
    from mlflow_ccfv.pipelines.finetune_setup import FinetuneRequest

    with exit_on_input_error("finetune"):
        config = train_config_from_options(options)
        check_tracking_server(options["experiment"])
        request = FinetuneRequest(
            options["model"],
            options["dataset"],
            config,
            data_root=options["data_root"] or None,
            split_seed=options["split_seed"],
            overlap=options["overlap"],
            force=options["force"],
            seeds=options["seeds"],
            device=options["device"],
            checkpoint_every=options["checkpoint_every"],
            allow_pickle=options["allow_pickle"],
        )
        outcome = finetune_version(request)
    per_class = ", ".join(f"class {k}: {v:.4f}" for k, v in outcome.dice.per_class.items())
    spread = f" ± {outcome.dice_sd:.4f} over seeds" if outcome.dice_sd == outcome.dice_sd else ""
    click.echo(
        f"{outcome.model} on {outcome.dataset}: Dice {outcome.dice.mean:.4f}{spread}"
        + (f" ({per_class})" if per_class else " (reused: same budget already measured)")
        + (f"; run {outcome.run_id}" if outcome.run_id else "")
    )
