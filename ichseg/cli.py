"""The `ichseg` command: phantom, prepare, report.

Every subcommand turns a user error into one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ichseg.errors import IchsegError


def _phantom(args: argparse.Namespace) -> None:
    from ichseg.data.phantom import write_phantom

    start = time.perf_counter()
    out = write_phantom(Path(args.out), patients=args.patients, size=args.size, seed=args.seed)
    print(f"wrote synthetic release {out} in {time.perf_counter() - start:.1f} s")


def _prepare(args: argparse.Namespace) -> None:
    from ichseg.data.prepare import PrepareConfig, load_prepared, prepare

    cfg = PrepareConfig(
        size=args.size,
        level=args.level,
        width=args.width,
        split=args.split,
        seed=args.seed,
    )
    start = time.perf_counter()
    cache = prepare(Path(args.release), Path(args.out), cfg)
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


def _report(args: argparse.Namespace) -> None:
    from ichseg.report.build import build_report, latest_sweep
    from ichseg.report.test_eval import evaluate_test

    sweep = Path(args.sweep) if args.sweep else latest_sweep(Path(args.experiments))
    out = build_report(
        sweep, protocol=args.protocol, test_eval=None if args.no_test else evaluate_test
    )
    print(f"report written to {out}")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `ichseg` command."""
    parser = argparse.ArgumentParser(prog="ichseg", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("phantom", help="write a synthetic release in the PhysioNet layout")
    p.add_argument("out", help="folder to create")
    p.add_argument("--patients", type=int, default=75)
    p.add_argument("--size", type=int, default=512, help="in-plane pixels (real: 512)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_phantom)

    p = sub.add_parser("prepare", help="window, resize, balance and split a release into a cache")
    p.add_argument("release", help="release folder (ct_scans/, masks/, the slice CSV)")
    p.add_argument("out", help="cache root; the cache goes to a subfolder named by its settings")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--level", type=float, default=40.0, help="window level (HU)")
    p.add_argument("--width", type=float, default=120.0, help="window width (HU)")
    p.add_argument("--split", choices=("slice", "patient"), default="slice")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_prepare)

    p = sub.add_parser("report", help="Table 1, selection, test scores and figures of a sweep")
    p.add_argument("sweep", nargs="?", help="sweep folder (default: the latest under experiments/)")
    p.add_argument("--experiments", default="experiments", help="where to look for the latest")
    p.add_argument("--protocol", default="paper", choices=("paper", "lesion", "pooled"))
    p.add_argument("--no-test", action="store_true", help="skip scoring the held-out test split")
    p.set_defaults(func=_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `ichseg` console script."""
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except IchsegError as exc:
        print(f"ichseg {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
