"""ichseg's Hydra launchers: `hydra/launcher=gpus` (one machine, many GPUs) and `slurm`."""
