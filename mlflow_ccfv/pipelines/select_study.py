"""What ``select`` buys on a studied target: measure its race units once, replay every policy from them.

A study (``mlflow-ccfv study`` or ``demo``) has fine-tuned every version of a bank on a target with several
seeds and tagged the held-out Dice. :func:`measure_select_study` reads that bank from the MLflow store,
then measures the **unit table**: every pre-trained candidate (random-init controls are never candidates)
x every round length (``round_fractions`` of the study's fine-tuning steps) x every seed (default: the
study's seeds), each unit ``select``'s own (:func:`~mlflow_ccfv.pipelines.select.race_unit`: the study's
fine-tuning recipe for that many steps, Dice on the validation part ``select`` carves,
:func:`~mlflow_ccfv.pipelines.select.race_split`; the held-out cases are never loaded). Each unit is
appended to ``select_units_<target>.csv`` as it finishes, so a rerun measures only the missing ones.

Then every policy is replayed from the table (:mod:`mlflow_ccfv.study.select_regret`): ``select`` over
the stored ranking's top k, a random shortlist of k, the ranking alone; the outputs in ``out_dir``:
``select_heldout_<target>.csv`` (the truth: each candidate's held-out Dice per seed, its rank),
``select_regret_<target>.csv`` / ``.md`` / ``.png``, and ``select_regret.md`` / ``select_regret.csv``
gathering every target measured into that folder. Nothing is written to MLflow.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pandas as pd

from mlflow_ccfv.data import MSDDataset, short_name
from mlflow_ccfv.errors import OptionError, RegistryError
from mlflow_ccfv.networks import resolve_device
from mlflow_ccfv.options import MAX_DRAWS, parse_ints
from mlflow_ccfv.pipelines.rank import ranking_of
from mlflow_ccfv.pipelines.select import SPLIT_SEED, SelectTask, race_split, race_unit
from mlflow_ccfv.scoring.ranking import CONTROL_SOURCE
from mlflow_ccfv.study.select_regret import (
    UNIT_COLUMNS,
    plot_regret,
    regret_markdown,
    regret_per_seed,
    round_prefixes,
    summarize_regret,
)
from mlflow_ccfv.tracking import tags as T
from mlflow_ccfv.tracking.datasets import load_msd_dataset
from mlflow_ccfv.tracking.search import DEFAULT_BANK, bank_versions
from mlflow_ccfv.training import TrainConfig

__all__ = ["SelectStudy", "SelectStudyRequest", "StudiedBank", "measure_select_study", "studied_bank"]

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SelectStudyRequest:
    """A target studied before (``dataset`` under ``data_root``, the bank's versions fine-tuned on it) and
    where the measurement goes. ``round_fractions``: the race's round lengths as fractions of the study's
    fine-tuning steps (rounded, at least 1 step); ``seeds``: race seeds (empty: the study's fine-tuning
    seeds); ``validation_fraction``/``validation_seed``/``overlap``: as ``select``; ``max_draws``: the
    most random ordered shortlists averaged per size (all of them when there are fewer)."""

    dataset: str
    data_root: str | None = None
    bank: str = DEFAULT_BANK
    out_dir: str = "select-study"
    round_fractions: tuple[float, ...] = (0.25, 0.5, 1.0)
    seeds: tuple[int, ...] = ()
    validation_fraction: float = 0.2
    validation_seed: int = 0
    overlap: float = 0.5
    max_draws: int = MAX_DRAWS
    cache_dir: str | None = None
    device: str | None = None
    allow_pickle: bool | None = None

    def __post_init__(self) -> None:
        fractions = tuple(float(f) for f in self.round_fractions)
        if not fractions or any(not 0.0 < f <= 1.0 for f in fractions) or list(fractions) != sorted(set(fractions)):
            raise OptionError(f"--round-fractions must increase within (0, 1], e.g. 0.25,0.5,1; got {fractions}.")
        object.__setattr__(self, "round_fractions", fractions)
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))

    def rounds(self, full_steps: int) -> tuple[int, ...]:
        """The round lengths in steps for a full fine-tune of ``full_steps``."""
        return tuple(max(1, int(round(f * full_steps))) for f in self.round_fractions)


@dataclass(frozen=True)
class StudiedBank:
    """The study's side of a target: ``ranking`` (candidate labels, best first, by ``ranked_by``),
    ``heldout`` (label -> seed -> held-out Dice of the full fine-tune), the fine-tuning ``config``
    (its ``steps``: the full budget) and the study's ``seeds``."""

    ranking: list[str]
    ranked_by: str
    heldout: dict[str, dict[int, float]]
    config: TrainConfig
    seeds: tuple[int, ...]

    def mean_dice(self) -> dict[str, float]:
        """label -> mean held-out Dice over the study's seeds."""
        return {m: sum(d.values()) / len(d) for m, d in self.heldout.items()}

    def best_sd(self) -> float:
        """The sd (ddof 1) over seeds of the best candidate's held-out Dice."""
        mean = self.mean_dice()
        values = list(self.heldout[max(mean, key=lambda m: mean[m])].values())
        return statistics.stdev(values) if len(values) > 1 else math.nan


@dataclass(frozen=True)
class SelectStudy:
    """A measured target: its ``summary`` (one row per policy, schedule and k) and the files written."""

    target: str
    summary: pd.DataFrame
    files: list[Path]


def studied_bank(dataset: str, bank: str) -> StudiedBank:
    """Read the study's records of ``dataset`` from the store: each pre-trained version's fine-tune run
    (tag ``finetune.run.<dataset>``: per-seed Dice metrics, the ``train.*`` recipe, the split seed) and
    the stored ranking. Refused when a candidate lacks them, when the candidates' budgets differ, or
    when the study's split is not the one ``select`` carves its validation part from."""
    versions = [v for v in bank_versions(bank) if (v.tags or {}).get(T.SOURCE_DATASET) != CONTROL_SOURCE]
    if not versions:
        raise RegistryError(f"The bank {bank!r} has no pre-trained version; run the study first.")
    client = mlflow.MlflowClient()
    heldout: dict[str, dict[int, float]] = {}
    budgets, configs = set(), set()
    for v in versions:
        label, tags = f"{v.name}/{v.version}", dict(v.tags or {})
        run_id = tags.get(T.finetune_run_tag(dataset))
        if not run_id:
            raise RegistryError(f"{label} has no fine-tuning on {dataset} (tag {T.finetune_run_tag(dataset)}).")
        run = client.get_run(run_id)
        params, metrics = run.data.params, run.data.metrics
        if int(params.get("split_seed", SPLIT_SEED)) != SPLIT_SEED:
            raise RegistryError(
                f"{label} was fine-tuned on the split of seed {params['split_seed']}; select carves its validation "
                f"part from the split of seed {SPLIT_SEED}, so the two would overlap."
            )
        seeds = parse_ints(tags.get(T.finetune_seeds_tag(dataset), params.get("seeds", "")), "seeds", minimum=0)
        heldout[label] = {s: float(metrics[T.seed_dice_metric(s)]) for s in seeds}
        budgets.add(tags.get(T.finetune_budget_tag(dataset), ""))
        configs.add(json.dumps({k.removeprefix("train."): v for k, v in params.items() if k.startswith("train.")}))
    if len(budgets) != 1 or len(configs) != 1:
        raise RegistryError(f"The candidates of {bank!r} were fine-tuned on {dataset} with different budgets.")
    seed_sets = {tuple(d) for d in heldout.values()}
    if len(seed_sets) != 1:
        raise RegistryError(f"The candidates of {bank!r} were fine-tuned on {dataset} with different seeds.")
    stored = ranking_of(dataset, bank)
    ranked = stored[stored["model"].isin(list(heldout))].sort_values("rank")
    if len(ranked) != len(heldout):
        missing = sorted(set(heldout) - set(ranked["model"]))
        raise RegistryError(f"{', '.join(missing)} hold no stored rank on {dataset}; run score on it first.")
    by = {(v.tags or {}).get(T.ranked_by_tag(dataset), "") for v in versions}
    if len(by) != 1 or not next(iter(by)):
        raise RegistryError(f"The candidates of {bank!r} hold no common ranking of {dataset}; run score on it again.")
    ranked_by = by.pop()
    return StudiedBank(
        ranking=list(ranked["model"]),
        ranked_by=ranked_by,
        heldout=heldout,
        config=TrainConfig.from_dict(json.loads(configs.pop())),
        seeds=seed_sets.pop(),
    )


def _settings(request: SelectStudyRequest, study: StudiedBank, fit: list[str], validation: list[str]) -> dict:
    """What every unit of the table depends on (a rerun with other settings is refused)."""
    return {
        "train": study.config.to_dict(),
        "validation_fraction": request.validation_fraction,
        "validation_seed": request.validation_seed,
        "overlap": request.overlap,
        "fit": fit,
        "validation": validation,
    }


def _load_units(path: Path, settings_path: Path, settings: dict) -> pd.DataFrame:
    """The units measured before (empty when none); refused when they were measured with other settings."""
    if settings_path.is_file():
        before = json.loads(settings_path.read_text())
        if before != settings:
            raise OptionError(
                f"{path} was measured with other settings ({settings_path}); use another --out-dir or delete both."
            )
    else:
        settings_path.write_text(json.dumps(settings, indent=1) + "\n")
    if not path.is_file():
        return pd.DataFrame(columns=list(UNIT_COLUMNS))
    return pd.read_csv(path)


def _measure_units(
    request: SelectStudyRequest, study: StudiedBank, ds: MSDDataset, parts: tuple[list[str], list[str]], out: Path
) -> pd.DataFrame:
    """The unit table of ``ds``: the units recorded in ``select_units_<target>.csv`` plus the missing
    ones, measured here and appended one by one (a killed measurement loses at most the unit in flight).
    ``parts``: the race's fit and validation case ids."""
    target, (fit, validation) = short_name(ds), parts
    path, settings_path = out / f"select_units_{target}.csv", out / f"select_units_{target}.json"
    units = _load_units(path, settings_path, _settings(request, study, fit, validation))
    done = {(str(m), int(s), int(t)) for m, s, t in zip(units["model"], units["steps"], units["seed"])}
    seeds = request.seeds or study.seeds
    rounds = request.rounds(study.config.steps)
    todo = [(m, s, t) for t in seeds for m in study.ranking for s in rounds if (m, s, t) not in done]
    _logger.info(
        "%s: %d candidates x rounds %s x seeds %s: %d units recorded, %d to measure",
        target,
        len(study.ranking),
        ",".join(map(str, rounds)),
        ",".join(map(str, seeds)),
        len(done),
        len(todo),
    )
    if todo:
        cases = (list(ds.iter_cases(fit, progress=False)), list(ds.iter_cases(validation, progress=False)))
        device = str(resolve_device(request.device))
        start = time.perf_counter()
        for i, (model, steps, seed) in enumerate(todo, 1):
            task = SelectTask(
                f"models:/{model}",
                0,
                dataclasses.replace(study.config, steps=steps, seed=seed),
                str(ds.root),
                tuple(fit),
                tuple(validation),
                len(ds.labels),
                overlap=request.overlap,
                device=device,
                cache_dir=request.cache_dir,
                allow_pickle=request.allow_pickle,
            )
            result = race_unit(task, cases)
            row = pd.DataFrame(
                [[model, steps, seed, result.dice, round(result.seconds, 2)]], columns=list(UNIT_COLUMNS)
            )
            row.to_csv(path, mode="a", header=not path.is_file(), index=False)
            units = pd.concat([units, row], ignore_index=True) if len(units) else row
            left = (time.perf_counter() - start) / i * (len(todo) - i)
            _logger.info(
                "%s unit [%d/%d] %s, %d steps, seed %d: validation Dice %.4f (%.0f s); about %.0f min left",
                target,
                i,
                len(todo),
                model,
                steps,
                seed,
                result.dice,
                result.seconds,
                left / 60,
            )
    wanted = {(m, s, t) for t in seeds for m in study.ranking for s in rounds}
    keys = list(zip(units["model"].astype(str), units["steps"].astype(int), units["seed"].astype(int)))
    return units[[k in wanted for k in keys]].reset_index(drop=True)


def _heldout_table(study: StudiedBank) -> pd.DataFrame:
    mean = study.mean_dice()
    return pd.DataFrame(
        [
            {"rank": i, "model": m, "heldout_dice": mean[m], **{f"seed{s}": d for s, d in study.heldout[m].items()}}
            for i, m in enumerate(study.ranking, 1)
        ]
    )


def _gather(out: Path) -> list[Path]:
    """``select_regret.md`` and ``select_regret.csv``: every target's section and rows found in ``out``."""
    sections = sorted(p for p in out.glob("select_regret_*.md"))
    tables = sorted(p for p in out.glob("select_regret_*.csv"))
    md, csv = out / "select_regret.md", out / "select_regret.csv"
    md.write_text(
        "# select: regret against compute\n\n" + "\n".join(p.read_text() for p in sections),
    )
    pd.concat([pd.read_csv(p) for p in tables], ignore_index=True).to_csv(csv, index=False)
    return [md, csv]


def measure_select_study(request: SelectStudyRequest) -> SelectStudy:
    """Measure (or resume) ``request.dataset``'s unit table, replay every policy from it and write the
    regret table, its Markdown section and plot (see the module docstring); returns the summary."""
    ds = load_msd_dataset(request.dataset, request.data_root, request.cache_dir)
    split, fit, validation = race_split(ds, request.validation_fraction, request.validation_seed)
    target = split.name
    study = studied_bank(target, request.bank)
    out = Path(request.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    units = _measure_units(request, study, ds, (fit, validation), out)
    rounds = request.rounds(study.config.steps)
    mean = study.mean_dice()
    per_seed = regret_per_seed(units, mean, study.ranking, rounds, study.config.steps, request.max_draws)
    summary = summarize_regret(per_seed)
    summary.insert(0, "target", target)
    best_sd = study.best_sd()
    files = [
        out / f"select_heldout_{target}.csv",
        out / f"select_regret_{target}.csv",
        out / f"select_regret_{target}.md",
    ]
    _heldout_table(study).to_csv(files[0], index=False)
    summary.to_csv(files[1], index=False)
    files[2].write_text(
        regret_markdown(target, summary, mean, best_sd, study.ranking, study.ranked_by, study.config.steps)
    )
    files.append(plot_regret(target, summary, best_sd, out / f"select_regret_{target}.png"))
    files += _gather(out)
    _logger.info(
        "%s: %d schedules x %d shortlist sizes replayed; wrote %s",
        target,
        len(round_prefixes(rounds)),
        len(study.ranking),
        ", ".join(str(p) for p in files),
    )
    return SelectStudy(target, summary, files)
