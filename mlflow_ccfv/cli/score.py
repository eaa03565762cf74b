"""``mlflow-ccfv score``: rank the model bank on a target dataset (MLproject entry point ``score``)."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import click

from mlflow_ccfv.cli.base import (
    CCFVCommand,
    EnumChoice,
    IntTuple,
    MethodsText,
    OptionalFloat,
    OptionalInt,
    RankBy,
    allow_pickle_option,
    bool_option,
    cache_dir_option,
    check_tracking_server,
    data_root_option,
    device_option,
    exit_on_input_error,
    experiment_option,
    json_option,
    methods_help,
    ray_options,
    target_option,
)
from mlflow_ccfv.options import TargetSplit, split_list

if TYPE_CHECKING:
    from mlflow_ccfv.pipelines.score_request import ScoreRequest

__all__ = ["SAMPLER_OPTIONS", "score", "score_request"]


@click.command(cls=CCFVCommand)
@target_option()
@data_root_option()
@click.option("--bank", default="default", show_default=True, help="Score every version tagged ccfv.bank=<bank>.")
@click.option("--models", default="", help="Instead of the bank: comma-separated models:/<name>/<version> URIs.")
@click.option(
    "--methods",
    default="",
    type=MethodsText(),
    help=methods_help("Comma-separated estimators (default: ccfv and every baseline; 'all' adds the ablations)."),
)
@click.option(
    "--split",
    default=TargetSplit.TRAIN.value,
    show_default=True,
    type=EnumChoice(TargetSplit),
    help="Which cases of the target score the models.",
)
@click.option(
    "--roi-size",
    "roi_size",
    default="",
    type=IntTuple(length=3, minimum=1, maximum=4096),
    help="Sliding-window ROI, e.g. 32,32,32 (default: each version's patch_size); checked against the volumes and RAM.",
)
@click.option(
    "--overlap",
    default="",
    type=OptionalFloat(0, 1, max_open=True),
    help="Sliding-window overlap in [0, 1) (default 0.25).",
)
@click.option(
    "--global-samples",
    "global_samples",
    default="",
    type=OptionalInt(1, 10_000_000),
    help="Voxels per case for feature variety, >= 1 (default 256).",
)
@click.option(
    "--layer-budgets",
    "layer_budgets",
    default="",
    type=IntTuple(minimum=1, maximum=1_000_000),
    help="Per-class samples per layer, bottleneck -> output (default 100,200,400).",
)
@click.option(
    "--sampler-seed",
    "sampler_seed",
    default="",
    type=OptionalInt(0, 2**63 - 1),
    help="Seed of the voxel sampling, an integer >= 0 (default 0).",
)
@bool_option("--force", help="true: recompute features.")
@cache_dir_option()
@bool_option("--verify", default=True, help="Run the dataset integrity check first.")
@device_option()
@allow_pickle_option
@ray_options
@bool_option(
    "--log-dataset",
    help="true: upload the target folder as artifacts first (as log-dataset; once per content).",
)
@click.option(
    "--rank-by",
    "rank_by",
    default="auto",
    show_default=True,
    type=RankBy(),
    help="What sets the rank tags and the best-<dataset> alias: auto (ccfv_twin where every architecture "
    "has a random-init twin, else ccfv), ccfv_twin (CC-FV minus that of a random-init twin of the model's "
    "architecture: the method docs/study.md's evidence supports), or an estimator (ccfv: the paper's).",
)
@bool_option(
    "--add-twins",
    default=True,
    help="true: with --rank-by auto or ccfv_twin, register and score a random-init twin of every "
    "architecture that has none (same network, random weights; no training).",
)
@experiment_option()
@json_option()
def score(**options) -> None:
    """Score the bank's versions on a target with CC-FV and the baselines; tag, alias and rank them."""
    from mlflow_ccfv.pipelines.rank import frame_json
    from mlflow_ccfv.pipelines.score import run_score
    from mlflow_ccfv.scoring import parse_methods
    from mlflow_ccfv.study.ranking import table_markdown

    as_json = options.pop("json")
    with exit_on_input_error("score"):
        request = score_request(options)
        check_tracking_server(options.pop("experiment"))
        table = run_score(request)
    shown = parse_methods(options["methods"])
    if as_json:
        click.echo(frame_json(table))
    else:
        click.echo(
            table_markdown(
                table,
                # the column ranked by first (what `auto` resolved to, or the --rank-by given)
                list(dict.fromkeys([*[c for c in (table.attrs.get("ranked_by"),) if c in table.columns], *shown])),
            )
        )
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


#: The options a :class:`~mlflow_ccfv.pipelines.score_request.ScoreRequest` takes as click parsed them.
_REQUEST_OPTIONS = (
    "dataset",
    "bank",
    "split",
    "verify",
    "executor",
    "num_cpus",
    "num_gpus",
    "log_dataset",
    "add_twins",
)


def score_request(options: Mapping[str, Any]) -> ScoreRequest:
    """The :class:`~mlflow_ccfv.pipelines.score_request.ScoreRequest` of ``score``'s parsed options
    (each error names its option)."""
    from mlflow_ccfv.pipelines.score_request import ScoreRequest, sampler_overrides
    from mlflow_ccfv.pipelines.score_task import ScoreConfig
    from mlflow_ccfv.scoring import parse_methods

    config = ScoreConfig(
        methods=parse_methods(options["methods"]),
        sampler=sampler_overrides(**{name: options[name] for name in SAMPLER_OPTIONS}),
        cache_dir=options["cache_dir"] or None,
        device=options["device"] or None,
        **{name: options[name] for name in ("force", "rank_by", "allow_pickle")},
    )
    return ScoreRequest(
        data_root=options["data_root"] or None,
        models=tuple(split_list(options["models"])),
        ray_address=options["ray_address"] or None,
        config=config,
        **{name: options[name] for name in _REQUEST_OPTIONS},
    )
