"""train.py and ichseg in subprocesses, the tiny sweep, SLURM, the notebook and nnU-Net."""
