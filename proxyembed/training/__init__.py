"""Training: config, the run dir, checkpoints, the trainer loop and evaluation.

``config``, ``loss_table`` and ``run_dir`` are torch-free (a run dir can be read where only the runtime is installed);
the rest imports torch.
"""
