"""Training: one single-device loop, run in-process or under Ray Train; EMA; checkpoints."""

from genpipe.training.fit import fit
from genpipe.training.stage import TrainOutcome, train_family

__all__ = ["TrainOutcome", "fit", "train_family"]
