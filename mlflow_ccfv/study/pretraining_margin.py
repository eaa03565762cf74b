"""Did pre-training matter on a target? The best pre-trained model against the best random-init control.

The test of a demo bank: on the target, the best pre-trained model's mean fine-tune Dice (over
seeds) must beat the best random-init control's by more than the Dice standard deviation over
fine-tuning seeds. The standard deviation compared with is the larger of the two models' seed
standard deviations (the conservative choice: a margin inside either model's seed noise does not
count). No MLflow: the input is the study's long table (:mod:`mlflow_ccfv.study.long_table`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

__all__ = ["PretrainingMargin", "pretraining_margin"]


@dataclass(frozen=True)
class PretrainingMargin:
    """``dataset``; the best pre-trained model (``pretrained``, its mean Dice and seed sd) and the best
    random-init control (``control``, same); ``margin`` = the Dice difference; ``sd`` = the larger seed
    sd; ``mattered``: ``margin > sd`` (False when the sd is unknown, e.g. one seed)."""

    dataset: str
    pretrained: str
    pretrained_dice: float
    pretrained_sd: float
    control: str
    control_dice: float
    control_sd: float

    @property
    def margin(self) -> float:
        return self.pretrained_dice - self.control_dice

    @property
    def sd(self) -> float:
        sds = [s for s in (self.pretrained_sd, self.control_sd) if not math.isnan(s)]
        return max(sds) if sds else float("nan")

    @property
    def mattered(self) -> bool:
        return not math.isnan(self.sd) and self.margin > self.sd

    def sentence(self) -> str:
        """One line that says plainly whether pre-training mattered on the target, with the numbers."""
        verdict = (
            "pre-training mattered"
            if self.mattered
            else "pre-training did NOT matter measurably"
            if not math.isnan(self.sd)
            else "pre-training cannot be judged (one fine-tuning seed: no sd)"
        )
        return (
            f"{self.dataset}: best pre-trained {self.pretrained} Dice {self.pretrained_dice:.3f} ± "
            f"{self.pretrained_sd:.3f} vs best random-init {self.control} {self.control_dice:.3f} ± "
            f"{self.control_sd:.3f}: margin {self.margin:+.3f} against the seed sd {self.sd:.3f} -> {verdict}."
        )


def pretraining_margin(frame: pd.DataFrame, dataset: str, control_source: str) -> PretrainingMargin:
    """The :class:`PretrainingMargin` of ``dataset`` from the long table ``frame`` (columns ``dataset``,
    ``model``, ``dice``, ``dice_sd``, ``source_dataset``); ``control_source``: the ``source_dataset``
    of the random-init controls. A ValueError when the target lacks pre-trained models or controls."""
    models = frame[frame["dataset"] == dataset].drop_duplicates("model")
    is_control = models["source_dataset"] == control_source
    pretrained, controls = models[~is_control], models[is_control]
    if pretrained.empty or controls.empty:
        raise ValueError(
            f"{dataset}: comparing pre-training needs pre-trained models and random-init controls "
            f"({len(pretrained)} and {len(controls)} here)."
        )
    best = pretrained.loc[pretrained["dice"].astype(float).idxmax()]
    ctrl = controls.loc[controls["dice"].astype(float).idxmax()]
    return PretrainingMargin(
        dataset,
        str(best["model"]),
        float(best["dice"]),
        float(best["dice_sd"]),
        str(ctrl["model"]),
        float(ctrl["dice"]),
        float(ctrl["dice_sd"]),
    )
