"""Training: nnU-Net-like pre-training, the paper's fine-tuning protocol, and Dice on held-out cases (no MLflow).

- :mod:`~mlflow_ccfv.training.config`: ``TrainConfig``, the budget and recipe;
- :mod:`~mlflow_ccfv.training.loops`: ``pretrain``, ``finetune``, ``train_segmentation``;
- :mod:`~mlflow_ccfv.training.patches`: ``PatchSampler``, foreground-oversampled training patches;
- :mod:`~mlflow_ccfv.training.initialisation`: seeded networks and the fine-tuning head re-initialisation;
- :mod:`~mlflow_ccfv.training.dice`: sliding-window inference and MONAI ``DiceMetric`` on held-out cases;
- :mod:`~mlflow_ccfv.training.selection`: successive halving's schedule and the validation part of a target.
"""

from mlflow_ccfv.training.checkpoint import TrainingCheckpoint
from mlflow_ccfv.training.config import TrainConfig
from mlflow_ccfv.training.dice import DiceResult, constant_predictor_dice, dice_per_class, evaluate_dice, predict
from mlflow_ccfv.training.initialisation import (
    head_parameter_names,
    init_for_finetuning,
    input_parameter_names,
    seeded_network,
    target_spec,
)
from mlflow_ccfv.training.loops import TrainResult, finetune, pretrain, train_segmentation
from mlflow_ccfv.training.patches import PatchSampler
from mlflow_ccfv.training.selection import (
    HalvingRound,
    check_budget,
    halving_schedule,
    keep_best,
    schedule_steps,
    validation_split,
)

__all__ = [
    "DiceResult",
    "HalvingRound",
    "PatchSampler",
    "TrainConfig",
    "TrainResult",
    "TrainingCheckpoint",
    "check_budget",
    "constant_predictor_dice",
    "dice_per_class",
    "evaluate_dice",
    "finetune",
    "halving_schedule",
    "head_parameter_names",
    "init_for_finetuning",
    "input_parameter_names",
    "keep_best",
    "predict",
    "pretrain",
    "schedule_steps",
    "seeded_network",
    "target_spec",
    "train_segmentation",
    "validation_split",
]
