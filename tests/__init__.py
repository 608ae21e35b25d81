"""ichseg's test suite: unit/ (in-process, the development loop), system/ and helpers/."""
