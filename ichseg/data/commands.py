"""`ichseg phantom` and `ichseg prepare`: their arguments and entry points."""

from __future__ import annotations

import argparse
import sys
import time

from ichseg.arguments import add_command, allow_non_hu_option, binary_labels_option, output_dir
from ichseg.config_schema import SCHEMA


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add `phantom` and `prepare` to the `ichseg` command."""
    p = add_command(
        commands, "phantom", help="write a synthetic release in the layout of a data source"
    )
    p.add_argument("out", help="folder to create")
    p.add_argument("--patients", type=int, default=75)
    p.add_argument("--size", type=int, default=512, help="in-plane pixels (real: 512)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--layout",
        choices=SCHEMA["phantom.layout"].choices,
        default="physionet",
        help="folder layout",
    )
    p.set_defaults(func=phantom_entry)

    p = add_command(
        commands, "prepare", help="window, resize, balance and split a release into a cache"
    )
    p.add_argument("release", help="release folder, in the layout of --source")
    p.add_argument(
        "--source",
        default="physionet",
        help="data source: a conf/data/<name>.yaml (physionet, instance22, bhsd, nnunet_raw, "
        "phantom) or a source class's import path",
    )
    p.add_argument("out", help="cache root; the cache goes to a subfolder named by its settings")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--level", type=float, default=40.0, help="window level (HU)")
    p.add_argument("--width", type=float, default=120.0, help="window width (HU)")
    p.add_argument("--split", choices=SCHEMA["data.split"].choices, default="slice")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-folds", type=int, default=10, help="cross-validation folds")
    p.add_argument("--test-fraction", type=float, default=0.1, help="held out per class")
    allow_non_hu_option(p)
    binary_labels_option(p, "the release's")
    p.set_defaults(func=prepare_entry)


def phantom_entry(args: argparse.Namespace) -> None:
    """`ichseg phantom`: write the synthetic release, unless OUT already holds it."""
    from ichseg.data.phantom import ensure_phantom, is_phantom, phantom_params

    out = output_dir(args.out, "OUT")
    params = {"patients": args.patients, "size": args.size, "seed": args.seed}
    if is_phantom(out, phantom_params(**params, layout=args.layout)):
        print(f"{out} already holds this synthetic release; nothing written")
        return
    start = time.perf_counter()
    ensure_phantom(out, **params, layout=args.layout)
    print(
        f"wrote synthetic release {out} ({args.layout} layout) in "
        f"{time.perf_counter() - start:.1f} s"
    )


def prepare_entry(args: argparse.Namespace) -> None:
    """`ichseg prepare`: build (or find) the cache and say what it holds."""
    from ichseg.data.prepare import PrepareConfig, load_prepared, lost_to_resize_warning, prepare
    from ichseg.data.sources import source_named

    cfg = PrepareConfig(
        size=args.size,
        level=args.level,
        width=args.width,
        split=args.split,
        seed=args.seed,
        n_folds=args.n_folds,
        test_fraction=args.test_fraction,
    )
    out = output_dir(args.out, "OUT")
    start = time.perf_counter()
    source = source_named(args.source, args.release, args.binary_labels)
    cache = prepare(source, out, cfg, allow_non_hu=args.allow_non_hu)
    built = time.perf_counter() - start
    start = time.perf_counter()
    data = load_prepared(cache)
    loaded = time.perf_counter() - start
    n_ich = int(data.has_ich.sum())
    print(
        f"{cache}: {len(data.ids)} slices ({n_ich} with hemorrhage), "
        f"{len(data.splits['test'])} test, {len(data.splits['folds'])} folds; "
        f"prepared in {built:.1f} s, loads in {loaded:.3f} s"
    )
    lost = lost_to_resize_warning(data.meta)
    if lost:
        print(f"ichseg prepare: warning: {cache}: {lost}", file=sys.stderr)
