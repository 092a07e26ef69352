"""Training: config, checkpoints, the trainer loop and evaluation (imports torch)."""
