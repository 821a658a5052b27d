"""Distillation: frozen teacher, feature taps, the paper's losses, data and the Accelerate training function.

Quick use::

    from vitkd_zoo.distill import run_training
    summary = run_training("training/configs/fmnist/lift_softkd_fft.yaml", "outputs/lift",
                           overrides={"teacher": "local-dir:outputs/teacher/export", "epochs": 2})
"""
from .config import DEFAULTS, ConfigError, load_config, method_name, parse_cli_overrides
from .data import DatasetError, RepeatedAugSampler, SeededDataset, build_datasets, build_transforms
from .losses import (
    ChannelPool,
    DistillationLoss,
    ProjectorAdapter,
    channel_pool,
    cross_entropy_loss,
    feature_mse_loss,
    hard_kd_loss,
    soft_kd_loss,
    spatial_fft_mse_loss,
)
from .taps import DISTILL_LAYER, FeatureTap, LayerNotFoundError
from .teacher import FrozenTeacher, create_teacher
from .trainer import (
    DistillationModel,
    FeatureWidthMismatchError,
    NonFiniteLossError,
    SetupError,
    TokenGridMismatchError,
    check_distillation_setup,
    evaluate,
    export_model,
    find_checkpoints,
    run_training,
    train_step,
)

__all__ = [
    "run_training", "load_config", "parse_cli_overrides", "method_name", "DEFAULTS",
    "FrozenTeacher", "create_teacher", "FeatureTap", "DISTILL_LAYER", "DistillationModel", "DistillationLoss",
    "ChannelPool", "ProjectorAdapter", "channel_pool", "cross_entropy_loss", "soft_kd_loss", "hard_kd_loss",
    "feature_mse_loss", "spatial_fft_mse_loss", "train_step", "evaluate", "check_distillation_setup",
    "export_model", "find_checkpoints", "build_datasets", "build_transforms", "RepeatedAugSampler", "SeededDataset",
    "ConfigError", "DatasetError", "SetupError", "FeatureWidthMismatchError", "TokenGridMismatchError",
    "LayerNotFoundError", "NonFiniteLossError",
]
