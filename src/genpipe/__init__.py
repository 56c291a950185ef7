"""genpipe: train, evaluate, compare and serve image generative models as one pipeline."""

__version__ = "0.1.0"
