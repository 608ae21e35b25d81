"""What the tests share: train.py runs, tiny checkpoints and scans, the reliability table,
and the SLURM cluster and nnU-Net scripts the system tests start."""
