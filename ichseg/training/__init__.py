"""training stage of the ichseg pipeline."""
