"""In-process tests, a few tiny training steps at most and no sweep: `make test-fast`."""
