"""The ranking rule, in one place: which model is whose random-init twin, what ``auto`` ranks by, the
rank order, and when the ranking says that no pre-trained model is expected to beat a random network.

Pure functions over :class:`Member` records (no MLflow): the registry's ``rerank``, ``score``'s printed
table, the evaluator and the study's report all build members and call these.

- **Network identity.** Two models are the same network when their specs agree on every constructor
  argument but the output channels (a head that fine-tuning replaces) and they run on the same patch
  size: :func:`network_identity`. A model's **twin** is the random-init control of its identity
  (``source_dataset=random-init``), never a control of another configuration of the same class.
- **``ccfv_twin``** = a model's CC-FV minus its twin's CC-FV on the same target (the twin scores 0);
  a model whose identity has no control among the members has none (NaN).
- **Rankings**: an estimator's score; ``<estimator>_twin`` (``ccfv_twin`` for ``ccfv``) = the estimator
  minus its twin's; ``rank_aggregate`` = minus the mean rank under :data:`AGGREGATED_METHODS`.
- **``auto``** ranks by :data:`DEFAULT_RANKING` (chosen by the pre-registered rule of
  docs/preregistration.md); a twin-calibrated default falls back to its estimator when a candidate has no
  twin among the members (one rule for the whole group: two scales are never mixed).
- **Candidates and controls.** Random-init controls are references, not candidates: they get no rank
  and never the ``best-<dataset>`` alias. When a control scores above the best candidate, the ranking
  says so (:attr:`RankOrder.control_above`): no pre-trained model is expected to beat training from
  scratch.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "AGGREGATED_METHODS",
    "AUTO_RANK",
    "CONTROL_SOURCE",
    "DEFAULT_RANKING",
    "RANK_AGGREGATE",
    "FROM_SCRATCH_WARNING",
    "TWIN_METHOD",
    "TWIN_SEED",
    "Member",
    "RankOrder",
    "choose_ranking",
    "is_twin",
    "needed_estimators",
    "network_identity",
    "rank_members",
    "ranking_score",
    "twin_base",
    "twin_scores",
]

#: ``source_dataset`` of the random-init controls (the twins).
CONTROL_SOURCE = "random-init"
#: The twin-calibrated ranking: CC-FV minus the CC-FV of the model's random-init twin.
TWIN_METHOD = "ccfv_twin"
#: ``--rank-by`` value of the default ranking.
AUTO_RANK = "auto"
#: What ``auto`` ranks by: the pre-registered rule's choice (docs/preregistration.md, pre-registration 2;
#: the outcome in docs/study.md): among the candidates that keep random-init controls below clearly better
#: models and an in-domain model in the top 2 on all six benchmark targets (five synthetic, the real MSD
#: hippocampus), the best average weighted tau: LogME.
DEFAULT_RANKING = "logme"
#: The rank aggregate: minus the mean rank of a model under these estimators (pre-registered).
RANK_AGGREGATE = "rank_aggregate"
AGGREGATED_METHODS = ("ccfv_no_variety", "gbc", "logme")
#: Seed of the random weights of a twin (registered by ``score``, built by the evaluator).
TWIN_SEED = 0
#: What a ranking says when a random-init control scores above every pre-trained candidate.
FROM_SCRATCH_WARNING = "no pre-trained model is expected to beat training from scratch"

#: Constructor arguments that name the output channels (MONAI's and nnU-Net's spelling): not identity.
_OUTPUT_KEYS = ("out_channels", "num_classes")


def is_twin(method: str) -> bool:
    """Whether ``method`` is a twin-calibrated ranking (``ccfv_twin``, ``ccfv_no_variety_twin`` ...)."""
    return method.endswith("_twin")


def twin_base(method: str) -> str:
    """The estimator a twin-calibrated ranking calibrates: ``ccfv_twin`` -> ``ccfv``."""
    return method[: -len("_twin")]


def needed_estimators(method: str) -> tuple[str, ...]:
    """The estimators whose stored scores ``method`` (a ranking, or ``auto``) is computed from."""
    if method == AUTO_RANK:
        return tuple(dict.fromkeys([*needed_estimators(DEFAULT_RANKING), *_fallback_needs()]))
    if is_twin(method):
        return (twin_base(method),)
    if method == RANK_AGGREGATE:
        return AGGREGATED_METHODS
    return (method,)


def _fallback_needs() -> tuple[str, ...]:
    return (twin_base(DEFAULT_RANKING),) if is_twin(DEFAULT_RANKING) else ()


def network_identity(
    architecture: str, kwargs: Mapping[str, Any], patch_size: Sequence[int], normalization: str | None = None
) -> str:
    """The first 16 hex digits of the SHA-256 of the network's architecture, its constructor arguments
    without the output channels, its patch size (voxels) and, for an imported model, the intensity
    normalisation it was trained with (its input): equal for a model and its twin."""
    body: dict[str, Any] = {
        "architecture": architecture,
        "kwargs": {k: v for k, v in kwargs.items() if k not in _OUTPUT_KEYS},
        "patch_size": [int(s) for s in patch_size],
    }
    if normalization:
        body["normalization"] = normalization
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), default=list)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Member:
    """One model of a ranked group: ``model`` its label (``name/version``), ``network`` its
    :func:`network_identity` (None when unknown: no twin can be matched), ``source`` its
    ``source_dataset``, ``scores`` its estimator scores on the target (``ccfv``, ``logme``, ...)."""

    model: str
    network: str | None
    source: str | None
    scores: Mapping[str, float] = field(default_factory=dict)

    @property
    def is_control(self) -> bool:
        """A random-init control (a twin): a reference, never a candidate."""
        return self.source == CONTROL_SOURCE


def _sort_key(label: str) -> tuple[str, int, str]:
    name, _, version = label.rpartition("/")
    return (name, int(version), "") if version.isdigit() else (label, 0, label)


def _twins(members: Sequence[Member], method: str) -> dict[str, float]:
    """``method``'s score of the control of each network identity (the first by label if several)."""
    out: dict[str, float] = {}
    for m in sorted(members, key=lambda m: _sort_key(m.model)):
        if m.is_control and m.network and m.network not in out and method in m.scores:
            out[m.network] = float(m.scores[method])
    return out


def twin_scores(members: Sequence[Member], method: str = "ccfv") -> list[float]:
    """Each member's ``method`` score minus that of the control of its network identity among
    ``members``; NaN without such a control or without the score (a control gets 0)."""
    twins = _twins(members, method)
    return [
        float(m.scores[method]) - twins[m.network] if m.network in twins and method in m.scores else math.nan
        for m in members
    ]


def _without_twin(members: Sequence[Member], method: str) -> list[str]:
    twins = _twins(members, twin_base(method))
    return sorted((m.model for m in members if not m.is_control and m.network not in twins), key=_sort_key)


def choose_ranking(members: Sequence[Member], preferred: str = DEFAULT_RANKING) -> tuple[str, list[str]]:
    """What ``auto`` ranks by: ``(preferred, [])``, except that a twin-calibrated ``preferred`` needs every
    candidate's twin among ``members``: without, ``(its estimator, the candidates without one)``."""
    if not is_twin(preferred):
        return preferred, []
    lonely = _without_twin(members, preferred)
    candidates = [m for m in members if not m.is_control]
    return (preferred if candidates and not lonely else twin_base(preferred)), lonely


def _rank_aggregate(members: Sequence[Member]) -> list[float]:
    """Minus the mean rank (1 = best, ties averaged) of each member under :data:`AGGREGATED_METHODS`
    among ``members``, over the ones it has a finite score for; NaN with none."""
    from scipy import stats  # about half a second to import: only where a rank aggregate is asked for

    ranks: list[list[float]] = [[] for _ in members]
    for method in AGGREGATED_METHODS:
        scored = [i for i, m in enumerate(members) if math.isfinite(m.scores.get(method, math.nan))]
        if not scored:
            continue
        values = np.array([-float(members[i].scores[method]) for i in scored])
        for i, rank in zip(scored, stats.rankdata(values, method="average")):
            ranks[i].append(float(rank))
    return [-sum(r) / len(r) if r else math.nan for r in ranks]


def ranking_score(members: Sequence[Member], method: str) -> list[float]:
    """Each member's score under the ranking ``method`` (an estimator, ``<estimator>_twin`` or
    ``rank_aggregate``); NaN where missing."""
    if is_twin(method):
        return twin_scores(members, twin_base(method))
    if method == RANK_AGGREGATE:
        return _rank_aggregate(members)
    return [float(m.scores[method]) if method in m.scores else math.nan for m in members]


@dataclass(frozen=True)
class RankOrder:
    """The outcome of :func:`rank_members`: ``method`` ranked by (``auto`` resolved); ``ranked`` the
    candidates with their score, best first (rank 1 first); ``controls`` the controls with theirs;
    ``without_twin`` candidates without a twin; ``control_above`` the controls scoring above the best
    candidate (then :data:`FROM_SCRATCH_WARNING` holds)."""

    method: str
    ranked: list[tuple[Member, float]]
    controls: list[tuple[Member, float]]
    without_twin: list[str]
    control_above: list[str]

    @property
    def best(self) -> Member | None:
        return self.ranked[0][0] if self.ranked else None

    def warning(self) -> str | None:
        """One sentence for the user when a control beats every candidate, else None."""
        if not self.control_above:
            return None
        top = self.ranked[0] if self.ranked else None
        against = f" (best pre-trained: {top[0].model}, {self.method} {top[1]:.4g})" if top else ""
        return (
            f"{FROM_SCRATCH_WARNING}: the random-init control(s) {', '.join(self.control_above)} score above "
            f"every pre-trained model by {self.method}{against}."
        )


def rank_members(members: Sequence[Member], method: str = AUTO_RANK) -> RankOrder:
    """Rank the candidates of ``members`` by ``method`` (``auto``, ``ccfv_twin`` or an estimator):
    higher is better, a missing or non-finite score last, ties by name and version (so every process
    computes the same order). Controls are scored but not ranked."""
    lonely: list[str] = []
    if method == AUTO_RANK:
        method, lonely = choose_ranking(members)
    elif is_twin(method):
        lonely = _without_twin(members, method)
    values = ranking_score(members, method)
    pairs = list(zip(members, values))

    def order(pair: tuple[Member, float]) -> tuple[float, tuple[str, int, str]]:
        value = pair[1]
        return (-value if math.isfinite(value) else math.inf, _sort_key(pair[0].model))

    ranked = sorted((p for p in pairs if not p[0].is_control), key=order)
    controls = sorted((p for p in pairs if p[0].is_control), key=order)
    top = ranked[0][1] if ranked and math.isfinite(ranked[0][1]) else -math.inf
    above = [m.model for m, v in controls if math.isfinite(v) and v > top]
    return RankOrder(method, ranked, controls, lonely, above)
