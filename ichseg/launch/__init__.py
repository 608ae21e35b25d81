"""Running a sweep on more than one device: GPU slots on one machine, placement, SLURM."""

from hydra.errors import CompactHydraException

from ichseg.errors import IchsegError


class LaunchError(IchsegError, CompactHydraException):
    """A launcher's one-line error; Hydra prints the message alone, not a traceback."""
