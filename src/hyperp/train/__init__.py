"""Config, the training loop, checkpoints and distributed set-up (DESIGN.md ``train/``)."""

from hyperp.train.config import (
    DataConfig,
    OptimConfig,
    RunConfig,
    RunPlan,
    TrainConfig,
    load_config,
    parse_overrides,
)

__all__ = [
    "DataConfig",
    "OptimConfig",
    "RunConfig",
    "RunPlan",
    "TrainConfig",
    "load_config",
    "parse_overrides",
]
