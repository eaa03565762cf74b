"""Training: nnU-Net-like pre-training, the paper's fine-tuning protocol, and Dice on held-out cases (no MLflow).

- :mod:`~mlflow_ccfv.training.loops`: ``TrainConfig``, ``pretrain``, ``finetune``, ``train_segmentation``;
- :mod:`~mlflow_ccfv.training.dice`: sliding-window inference and MONAI ``DiceMetric`` on held-out cases.
"""

from mlflow_ccfv.training.checkpoint import TrainingCheckpoint
from mlflow_ccfv.training.dice import DiceResult, constant_predictor_dice, dice_per_class, evaluate_dice, predict
from mlflow_ccfv.training.loops import (
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
    "DiceResult",
    "PatchSampler",
    "TrainConfig",
    "TrainResult",
    "TrainingCheckpoint",
    "constant_predictor_dice",
    "dice_per_class",
    "evaluate_dice",
    "finetune",
    "head_parameter_names",
    "init_for_finetuning",
    "input_parameter_names",
    "predict",
    "pretrain",
    "seeded_network",
    "target_spec",
    "train_segmentation",
]
