"""Launching a sweep: its overrides checked, its folder recorded, GPU slots on one machine,
placement, SLURM."""

from hydra.errors import CompactHydraException

from ichseg.errors import IchsegError


class LaunchError(IchsegError, CompactHydraException):
    """A launcher's one-line error; Hydra prints the message alone, not a traceback."""
