"""Training loop, evaluation, checkpoints and distributed helpers."""
