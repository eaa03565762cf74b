"""``mlflow-ccfv select-study``: regret of ``select`` against its compute on a target a study fine-tuned."""

from __future__ import annotations

import click

from mlflow_ccfv.cli import shared_options as shared
from mlflow_ccfv.cli.base import check_tracking_server, command, exit_on_input_error
from mlflow_ccfv.options import MAX_DRAWS, parse_float, split_list

__all__ = ["select_study"]


@command()
@shared.target_option()
@shared.data_root_option()
@shared.bank_option("The bank the study fine-tuned on the target.")
@click.option(
    "--out-dir",
    "out_dir",
    default="select-study",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Where the unit table (resumed when present), the regret tables and plots are written.",
)
@click.option(
    "--round-fractions",
    "round_fractions",
    default="0.25,0.5,1",
    show_default=True,
    help="Round lengths of the race as fractions of the study's fine-tuning steps, increasing within (0, 1].",
)
@shared.seeds_option("Race seeds (default: the study's fine-tuning seeds).", default="")
@shared.validation_fraction_option("As select: the share of the target's training cases the race measures Dice on.")
@shared.seed_option("--validation-seed", "As select: the seed of the validation draw.")
@shared.overlap_option("Sliding-window overlap when measuring Dice, in [0, 1).")
@shared.count_option(
    "--max-draws",
    "Random ordered shortlists averaged per size (every one when there are fewer).",
    default=MAX_DRAWS,
)
@shared.cache_dir_option()
@shared.device_option()
@shared.allow_pickle_option()
def select_study(**options) -> None:
    """Measure what select buys on a target a study fine-tuned: every candidate's race units (resumable),
    then the regret of select, the ranking alone and a random shortlist against the fine-tuning steps."""
    from mlflow_ccfv.pipelines.select_study import SelectStudyRequest, measure_select_study

    with exit_on_input_error("select-study"):
        fractions = tuple(
            parse_float(text, "--round-fractions", minimum=0.0, maximum=1.0)
            for text in split_list(options["round_fractions"])
        )
        request = shared.request_from_options(
            SelectStudyRequest, options, round_fractions=fractions, seeds=tuple(options["seeds"])
        )
        check_tracking_server()
        study = measure_select_study(request)
    for path in study.files:
        click.echo(str(path))
