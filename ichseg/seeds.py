"""The seeds ichseg accepts: the range Lightning's `seed_everything` takes, as numpy does."""

import numbers

from ichseg.errors import IchsegError

MAX_SEED = 2**32 - 1


def check_seed(value: object, label: str) -> int:
    """`value` as a plain int when it is an integer in 0..MAX_SEED; else one line naming `label`."""
    integer = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if not integer or not 0 <= value <= MAX_SEED:
        raise IchsegError(f"{label}: expected an integer in 0..{MAX_SEED}, found {value!r}")
    return int(value)
