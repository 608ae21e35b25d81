"""data stage of the ichseg pipeline."""
