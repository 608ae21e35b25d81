"""The seeds ichseg accepts: the range Lightning's `seed_everything` takes, as numpy does."""

MAX_SEED = 2**32 - 1
