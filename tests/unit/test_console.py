"""A job's terminal: the library warnings ichseg ignores are exactly those it names."""

from __future__ import annotations

import warnings

from lightning_fabric.utilities.warnings import PossibleUserWarning

from ichseg.training.console import quiet_libraries


def test_only_the_named_library_warnings_are_ignored():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_libraries()
        srun = "The `srun` command is available on your system but is not used. HINT: srun x"
        warnings.warn(srun, PossibleUserWarning, stacklevel=1)
        leaf = "`isinstance(treespec, LeafSpec)` is deprecated, use y"
        warnings.warn(leaf, FutureWarning, stacklevel=1)
        kept = [
            ("The `srun` command failed", UserWarning),
            (leaf, DeprecationWarning),
            ("`isinstance(x, OtherSpec)` is deprecated", FutureWarning),
            ("does not have many workers", PossibleUserWarning),
        ]
        for message, category in kept:
            warnings.warn(message, category, stacklevel=1)
    assert [(str(w.message), w.category) for w in caught] == kept
