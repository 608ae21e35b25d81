"""Registers the reliability-table plugin from the repository root, so that
`--reliability-table PATH` is known whatever paths pytest is given."""

pytest_plugins = ["tests.helpers.reliability_table"]
