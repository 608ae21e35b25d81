"""inference stage of the ichseg pipeline: checkpoints read, ensembled, applied to scans."""
