"""Engine: configuration, builders, the training step, device/precision, checkpoints and the training loop."""

from alexnet_lab.engine.config import PRESETS, TrainConfig, make_config
from alexnet_lab.engine.step import TrainingStep, build_training_step
from alexnet_lab.engine.trainer import Callback, evaluate, fit

__all__ = ["PRESETS", "TrainConfig", "make_config", "TrainingStep", "build_training_step", "Callback",
           "evaluate", "fit"]
