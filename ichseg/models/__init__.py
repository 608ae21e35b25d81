"""models stage of the ichseg pipeline."""
