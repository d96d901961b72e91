"""Training: losses, the three stages, checkpoints, distributed execution."""
