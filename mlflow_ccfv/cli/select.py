"""``mlflow-ccfv select``: shortlist a bank by its scores, then race the shortlist with short fine-tunes."""

from __future__ import annotations

import click

from mlflow_ccfv.cli import shared_options as shared
from mlflow_ccfv.cli.base import check_tracking_server, command, exit_on_input_error
from mlflow_ccfv.cli.types import IntTuple

__all__ = ["select"]


@command()
@shared.target_option()
@shared.data_root_option()
@shared.bank_option("Select among the versions tagged ccfv.bank=<bank>.")
@shared.count_option(
    "--top-k",
    "Shortlist size: the best-ranked pre-trained versions (random-init controls are never candidates).",
    default=4,
)
@shared.rank_by_option("The ranking that shortlists.")
@click.option(
    "--rounds",
    default="50,100,200",
    type=IntTuple(minimum=1, maximum=10_000_000),
    show_default=True,
    help="Fine-tuning steps per successive-halving round; each round keeps the better half (rounded up) "
    "by validation Dice, the last keeps the winner.",
)
@shared.optional_int_option(
    "--budget",
    "The most fine-tuning steps the schedule may spend, summed over rounds and candidates; a schedule "
    "above it is refused before any work (default: no limit).",
    minimum=1,
    maximum=10**12,
)
@shared.validation_fraction_option(
    "Share of the target's training cases the race measures Dice on (the held-out 20% is never used)."
)
@shared.seed_option("--validation-seed", "Seed of the validation draw.")
@shared.overlap_option("Sliding-window overlap when measuring Dice, in [0, 1).")
@shared.methods_option("Estimators scored (default: score's).")
@shared.bool_option(
    "--force",
    help="true: a new selection even when one with the same settings is recorded (default: resume it).",
)
@shared.cache_dir_option()
@shared.train_options(steps=None, seed=0)
@shared.device_option()
@shared.allow_pickle_option()
@shared.ray_options(
    "serial: in this process; ray: one Ray task per version when scoring, per candidate and round when racing."
)
@shared.add_twins_option()
def select(**options) -> None:
    """Select a model for a target: shortlist the bank by its scores, then spend a fine-tuning budget on
    the shortlist (successive halving on a validation part of the training cases); alias the winner
    selected-<dataset>."""
    from mlflow_ccfv.pipelines.executors import make_executor
    from mlflow_ccfv.pipelines.select import SelectRequest, select_models
    from mlflow_ccfv.scoring import parse_methods

    with exit_on_input_error("select"):
        parse_methods(options["methods"])  # an unknown name is refused before the server is asked
        request = shared.request_from_options(
            SelectRequest,
            options,
            rounds=tuple(options["rounds"]),
            train=shared.train_config_from_options({**options, "steps": max(options["rounds"])}),
        )
        runner = make_executor(
            options["executor"],
            address=options["ray_address"] or None,
            num_cpus=float(options["num_cpus"] or 1),
            num_gpus=float(options["num_gpus"] or 0),
        )
        check_tracking_server()
        try:
            outcome = select_models(request, executor=runner)
        finally:
            runner.close()
    for label in outcome.shortlist:
        rounds = ", ".join(f"round {r}: {d:.4f}" for r, d in sorted(outcome.dice[label].items()))
        click.echo(f"{label}: {rounds}")
    click.echo(
        f"selected {outcome.winner} for {outcome.dataset} (validation Dice {outcome.winner_dice:.4f}; "
        f"{outcome.steps} fine-tuning steps, {outcome.trained_steps} trained now); run {outcome.run_id}"
    )
