"""`ichseg bench`: where a training job's time goes, measured on the machine at hand."""
