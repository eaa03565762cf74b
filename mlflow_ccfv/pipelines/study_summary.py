"""What a study prints: the ranked table per target, the correlations and the evidence with intervals
(Markdown), and the demo's ranking by the default."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import mlflow
import pandas as pd

from mlflow_ccfv.estimators import METHODS
from mlflow_ccfv.estimators.catalogue import method_names
from mlflow_ccfv.pipelines.study_config import StudyResult
from mlflow_ccfv.scoring import DEFAULT_METHODS
from mlflow_ccfv.scoring.ranking import CONTROL_SOURCE, DEFAULT_RANKING, RANK_AGGREGATE, TWIN_METHOD, choose_ranking
from mlflow_ccfv.study.long_table import ranked_table
from mlflow_ccfv.study.tables import to_markdown
from mlflow_ccfv.study.variants import frame_members
from mlflow_ccfv.tracking.views import DEFAULT_UI, ranking_view_url

__all__ = [
    "DEMO_METHODS",
    "demo_evidence",
    "demo_ranking",
    "demo_table",
    "evidence_summary",
    "print_summary",
]

_logger = logging.getLogger(__name__)


def demo_ranking(result: StudyResult, dataset: str) -> str:
    """What the demo ranks ``dataset``'s bank by: the default of ``score`` (``auto``:
    :data:`~mlflow_ccfv.scoring.ranking.DEFAULT_RANKING`, :func:`~mlflow_ccfv.scoring.ranking.choose_ranking`)."""
    sub = result.frame[(result.frame["dataset"] == dataset) & (result.frame["method"] == "ccfv")]
    return choose_ranking(frame_members(sub))[0]


def demo_table(result: StudyResult, dataset: str) -> pd.DataFrame:
    """The ranked table the demo prints: models by the default ranking (:func:`demo_ranking`) with
    CC-FV's, the baselines' scores and the measured Dice."""
    by = demo_ranking(result, dataset)
    estimators = tuple(m for m in DEMO_METHODS if m in METHODS)
    methods = (TWIN_METHOD, *estimators) if by == TWIN_METHOD else estimators
    return ranked_table(result.frame, dataset, by=by, methods=methods)


def print_summary(result: StudyResult, ui_hint: bool = False) -> str:
    """The ranked table per target, the correlations, timings and (demo) how to sort models in the UI."""
    lines = []
    for dataset in sorted(result.frame["dataset"].unique()):
        chosen = demo_ranking(result, dataset)
        by = f"{chosen} (the default ranking)" if chosen == DEFAULT_RANKING else chosen
        lines.append(f"\n## {dataset}: the bank ranked by {by} (dice = measured after fine-tuning)\n")
        lines.append(to_markdown(demo_table(result, dataset).set_index("rank")))
    corr = result.report.correlations
    main = corr[corr["method"].isin(DEFAULT_METHODS)]
    lines.append("\n## Correlation with the measured Dice (weighted Kendall's tau, Pearson, top-1 regret)\n")
    lines.append(
        to_markdown(
            main[["dataset", "method", "weighted_tau", "pearson", "top1_regret", "n_models"]].set_index(
                ["dataset", "method"]
            )
        )
    )
    s = result.seconds
    lines.append(
        f"\nTime: {s.get('total', 0):.0f} s in all (pre-training {s.get('pretrain', 0):.0f} s, scoring "
        f"{s.get('score', 0):.0f} s, fine-tuning {s.get('finetune', 0):.0f} s, report {s.get('report', 0):.0f} s)."
    )
    if s.get("finetune"):
        lines.append(
            f"Scoring the bank took {result.cost_ratio:.3f} x the time of fine-tuning it "
            f"(1/{1 / result.cost_ratio:.1f}) at this fine-tuning budget."
        )
    if ui_hint:
        uri = mlflow.get_tracking_uri()
        last = mlflow.last_active_run()  # the study/demo run itself
        active = last.info.experiment_id if last is not None else "<experiment id>"
        lines.append(
            "\nOpen the MLflow UI to sort the models:\n"
            f"  mlflow ui --backend-store-uri {uri} --port 5000\n"
            "  then, per target, the experiment's Runs tab with the ranking on screen (one run per model\n"
            "  version, sorted by the ranking score, ccfv and finetune_dice shown):"
        )
        for dataset in sorted(result.frame["dataset"].unique()):
            lines.append(f"  {ranking_view_url(active, dataset, base=DEFAULT_UI)}")
        lines.append(
            "  Registry: each version's tags transferability.<method>.<dataset>, finetune.dice.<dataset>,\n"
            "  and the alias best-<dataset> on the top-ranked model."
        )
    return "\n".join(lines)


def evidence_summary(
    result: StudyResult, methods: Sequence[str] = (*DEFAULT_METHODS, TWIN_METHOD, RANK_AGGREGATE)
) -> str:
    """Per target and for the average: the noise ceiling beside every method's weighted tau, top-1
    regret and selection value with their 95% intervals (the ``study`` command prints it)."""
    from mlflow_ccfv.study.evidence import evidence_table
    from mlflow_ccfv.study.long_table import METHOD_LABELS

    ev = result.report.evidence
    if ev is None:
        return ""
    table = evidence_table(ev, methods, METHOD_LABELS)
    columns = [
        "dataset",
        "method",
        "noise_ceiling",
        "weighted_tau",
        "top1_regret",
        "top1_dice",
        "random_dice",
        "best_dice",
    ]
    return (
        "\n## The evidence (bootstrap 95% intervals; the noise ceiling bounds what any estimator can reach)\n\n"
        + to_markdown(table[columns])
    )


#: The methods the demo's evidence table shows (the ranked table's, plus the pre-registered variants).
DEMO_METHODS = method_names(demo=True)


def demo_evidence(result: StudyResult, methods: Sequence[str] = DEMO_METHODS) -> str:
    """Per target: each method's weighted tau, Pearson and top-1 regret and its selection value (the
    Dice of its top-1 pick, the mean of its top 3) with bootstrap 95% intervals, beside a random pick,
    the best model and the noise ceiling; then whether pre-training mattered (the best pre-trained
    model against the best random-init control, :mod:`mlflow_ccfv.study.pretraining_margin`)."""
    from mlflow_ccfv.study.evidence import evidence_table
    from mlflow_ccfv.study.long_table import METHOD_LABELS
    from mlflow_ccfv.study.pretraining_margin import pretraining_margin

    ev = result.report.evidence
    lines = []
    for dataset in sorted(result.frame["dataset"].unique()):
        if ev is not None:
            table = evidence_table(ev, methods, METHOD_LABELS)
            table = table[table["dataset"] == dataset]
            if not table.empty:
                first = table.iloc[0]
                lines.append(
                    f"\n## {dataset}: does the ranking pick better models? (bootstrap 95% intervals over held-out "
                    "cases and fine-tuning seeds)\n"
                )
                lines.append(
                    "top1_dice / top3_dice: the selection value, the fine-tune Dice of the method's top pick / mean "
                    "of its top 3;\n"
                    f"against a random pick {first['random_dice']}, the best model {first['best_dice']}, and the "
                    f"noise ceiling (tau between fine-tuning replicates) {first['noise_ceiling']}.\n"
                )
                columns = ["method", "weighted_tau", "pearson", "top1_regret", "top1_dice", "top3_dice"]
                lines.append(to_markdown(table[columns].set_index("method")))
        try:
            lines.append(
                "\nDid pre-training matter? " + pretraining_margin(result.frame, dataset, CONTROL_SOURCE).sentence()
            )
        except ValueError as exc:
            lines.append(f"\nDid pre-training matter? Not measured: {exc}")
    return "\n".join(lines)
