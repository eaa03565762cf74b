"""The study layer: fine-tuning, Dice, rank correlation, tables and plots (no MLflow here).

- :mod:`~mlflow_ccfv.study.training`: nnU-Net-like pre-training and the paper's fine-tuning protocol;
- :mod:`~mlflow_ccfv.study.dice`: sliding-window inference and MONAI ``DiceMetric`` on held-out cases;
- :mod:`~mlflow_ccfv.study.report`: weighted tau / Pearson / top-1 regret, Tables 1-2, Fig.-2 scatter.

``report`` is not imported here (it pulls in the estimators and matplotlib): import it directly.
"""

from mlflow_ccfv.study.dice import DiceResult, constant_predictor_dice, dice_per_class, evaluate_dice, predict
from mlflow_ccfv.study.training import (
    PatchSampler,
    TrainConfig,
    TrainResult,
    finetune,
    head_parameter_names,
    init_for_finetuning,
    input_parameter_names,
    pretrain,
    seeded_network,
    target_spec,
    train_segmentation,
)

__all__ = [
    "DiceResult", "PatchSampler", "TrainConfig", "TrainResult", "constant_predictor_dice", "dice_per_class",
    "evaluate_dice", "finetune", "head_parameter_names", "init_for_finetuning", "input_parameter_names",
    "predict", "pretrain", "seeded_network", "target_spec", "train_segmentation",
]
