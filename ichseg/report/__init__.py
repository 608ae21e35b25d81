"""report stage of the ichseg pipeline."""
