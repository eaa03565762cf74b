"""``mlflow-ccfv finetune``: fine-tune a bank version on a target and record its held-out Dice."""

from __future__ import annotations

import click

from mlflow_ccfv.cli import shared_options as shared
from mlflow_ccfv.cli.base import check_tracking_server, command, exit_on_input_error

__all__ = ["finetune"]


@command()
@click.option("--model", required=True, help="models:/<name>/<version> (or models:/<name>@<alias>).")
@shared.target_option()
@shared.data_root_option()
@shared.seed_option("--split-seed", "Seed of the 80/20 split.")
@shared.overlap_option("Sliding-window overlap at evaluation, in [0, 1).")
@shared.bool_option("--force", help="true: fine-tune even if this budget's Dice is tagged.")
@shared.seeds_option("Comma-separated fine-tuning seeds, e.g. 0,1,2 (Dice mean and sd); default: --seed.", default="")
@shared.count_option(
    "--checkpoint-every",
    "Save the training state every N steps (0: never); a rerun after a kill resumes from it.",
    default=50,
    minimum=0,
)
@shared.allow_pickle_option()
@shared.train_options(steps=100, seed=0)
@shared.device_option()
@shared.experiment_option()
def finetune(**options) -> None:
    """Fine-tune a bank version on a target (all pre-trained weights but the last convolution, nothing
    frozen) and record its Dice (MONAI DiceMetric) on the held-out 20%."""
    from mlflow_ccfv.pipelines.finetune import finetune_version
    from mlflow_ccfv.pipelines.finetune_setup import FinetuneRequest

    with exit_on_input_error("finetune"):
        config = shared.train_config_from_options(options)
        check_tracking_server(options["experiment"])
        request = shared.request_from_options(FinetuneRequest, options, config=config)
        outcome = finetune_version(request)
    per_class = ", ".join(f"class {k}: {v:.4f}" for k, v in outcome.dice.per_class.items())
    spread = f" ± {outcome.dice_sd:.4f} over seeds" if outcome.dice_sd == outcome.dice_sd else ""
    click.echo(
        f"{outcome.model} on {outcome.dataset}: Dice {outcome.dice.mean:.4f}{spread}"
        + (f" ({per_class})" if per_class else " (reused: same budget already measured)")
        + (f"; run {outcome.run_id}" if outcome.run_id else "")
    )
