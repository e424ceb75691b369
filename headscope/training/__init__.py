"""Training attention-only toy models, the models where head roles form and can be watched forming."""

from headscope.training.train import TrainConfig, TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "train"]
