"""``mlflow-ccfv score``: rank the model bank on a target dataset (MLproject entry point ``score``)."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import click

from mlflow_ccfv.cli import shared_options as shared
from mlflow_ccfv.cli.base import check_tracking_server, command, exit_on_input_error
from mlflow_ccfv.cli.types import EnumChoice, IntTuple, OptionalFloat
from mlflow_ccfv.options import TargetSplit, split_list

if TYPE_CHECKING:
    from mlflow_ccfv.pipelines.score_request import ScoreRequest

__all__ = ["SAMPLER_OPTIONS", "score", "score_request"]


@command()
@shared.target_option()
@shared.data_root_option()
@shared.bank_option("Score every version tagged ccfv.bank=<bank>.")
@shared.models_option()
@shared.methods_option("Comma-separated estimators (default: ccfv and every baseline; 'all' adds the ablations).")
@click.option(
    "--split",
    default=TargetSplit.TRAIN.value,
    show_default=True,
    type=EnumChoice(TargetSplit),
    help="Which cases of the target score the models.",
)
@shared.window_size_option(
    "--roi-size",
    "Sliding-window ROI, e.g. 32,32,32 (default: each version's patch_size); checked against the volumes and RAM.",
)
@click.option(
    "--overlap",
    default="",
    type=OptionalFloat(0, 1, max_open=True),
    help="Sliding-window overlap in [0, 1) (default 0.25).",
)
@shared.optional_int_option(
    "--global-samples", "Voxels per case for feature variety, >= 1 (default 256).", minimum=1, maximum=10_000_000
)
@click.option(
    "--layer-budgets",
    default="",
    type=IntTuple(minimum=1, maximum=1_000_000),
    help="Per-class samples per layer, bottleneck -> output (default 100,200,400).",
)
@shared.optional_int_option(
    "--sampler-seed", "Seed of the voxel sampling, an integer >= 0 (default 0).", minimum=0, maximum=2**63 - 1
)
@shared.bool_option("--force", help="true: recompute features.")
@shared.cache_dir_option()
@shared.bool_option("--verify", default=True, help="Run the dataset integrity check first.")
@shared.device_option()
@shared.allow_pickle_option()
@shared.ray_options()
@shared.bool_option(
    "--log-dataset",
    help="true: upload the target folder as artifacts first (as log-dataset; once per content).",
)
@shared.rank_by_option("What sets the rank tags and the best-<dataset> alias.")
@shared.add_twins_option()
@shared.experiment_option()
@shared.json_option()
def score(**options) -> None:
    """Score the bank's versions on a target with CC-FV and the baselines; tag, alias and rank them."""
    from mlflow_ccfv.pipelines.rank import frame_json
    from mlflow_ccfv.pipelines.score import run_score
    from mlflow_ccfv.pipelines.score_ranking import shown_methods
    from mlflow_ccfv.study.ranking import table_markdown
    from mlflow_ccfv.tracking.tag_values import with_stored_digits

    as_json = options.pop("json")
    with exit_on_input_error("score"):
        request = score_request(options)
        check_tracking_server(options.pop("experiment"))
        table = run_score(request)
    # the column ranked by first (what `auto` resolved to, or the --rank-by given)
    shown = shown_methods(request.config.methods, table.attrs["ranked_by"])
    table = with_stored_digits(table, shown)  # the digits the registry holds, which `rank` prints
    click.echo(frame_json(table) if as_json else table_markdown(table, shown))
    errors = [(row.model, str(row.error)) for row in table.itertuples() if isinstance(row.error, str)]
    for model, error in errors:  # pickled versions without the opt-in are skipped, not failed
        if error.startswith("skipped: "):
            click.echo(f"SKIPPED {model}: {error.removeprefix('skipped: ')}", err=True)
    failed = [(model, error) for model, error in errors if not error.startswith("skipped: ")]
    for model, error in failed:
        click.echo(f"FAILED {model}: {error}", err=True)
    if failed:
        sys.exit(1)


#: The options that set the sampler (:func:`~mlflow_ccfv.pipelines.score_request.sampler_overrides`).
SAMPLER_OPTIONS = ("roi_size", "overlap", "global_samples", "layer_budgets", "sampler_seed")


def score_request(options: Mapping[str, Any]) -> ScoreRequest:
    """The :class:`~mlflow_ccfv.pipelines.score_request.ScoreRequest` of ``score``'s parsed options
    (each error names its option)."""
    from mlflow_ccfv.pipelines.score_request import ScoreRequest, sampler_overrides
    from mlflow_ccfv.pipelines.score_task import ScoreConfig
    from mlflow_ccfv.scoring import parse_methods

    config = shared.request_from_options(
        ScoreConfig,
        options,
        methods=parse_methods(options["methods"]),
        sampler=sampler_overrides(**{name: options[name] for name in SAMPLER_OPTIONS}),
    )
    return shared.request_from_options(
        ScoreRequest, options, models=tuple(split_list(options["models"])), config=config
    )
