"""A job folder: who may write it (lock), whether a config may continue it (config hash,
resume checkpoint), its status while it trains, and its result files."""
