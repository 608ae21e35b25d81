"""`ichseg bench`: its arguments and entry point."""

from __future__ import annotations

import argparse

from ichseg.arguments import add_command, csv_list, output_dir
from ichseg.bench.settings import SECTIONS, BenchSettings


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add `bench` to the `ichseg` command."""
    d = BenchSettings()
    p = add_command(commands, "bench", help="where training time goes: images/s, overheads, epochs")
    p.add_argument("--experiments", type=csv_list(), default=d.experiments, help="e.g. demo,paper")
    p.add_argument("--models", type=csv_list(), default=d.models, help="e.g. unet,dunet")
    p.add_argument(
        "--sections", type=csv_list(), default=d.sections, help=f"some of {','.join(SECTIONS)}"
    )
    p.add_argument("--device", default=d.device, help="auto (the GPU when present), cpu or cuda")
    p.add_argument("--repeats", type=int, default=d.repeats, help="timed repetitions per figure")
    p.add_argument("--warmup-steps", type=int, default=d.warmup_steps)
    p.add_argument("--warmup-s", type=float, default=d.warmup_s, help="least warm-up seconds")
    p.add_argument("--window-s", type=float, default=d.window_s, help="seconds per repetition")
    p.add_argument("--monai-workers", type=int, default=d.monai_workers)
    p.add_argument("--jobs-per-device", type=csv_list(int), default=d.jobs_per_device)
    p.add_argument(
        "--override",
        action="append",
        default=[],
        help="a Hydra override for every job config, e.g. data.batch_size=16 (repeatable)",
    )
    p.add_argument(
        "--predict-option",
        action="append",
        default=[],
        help="an option of the timed ichseg predict, e.g. --predict-option=--flip (repeatable)",
    )
    p.add_argument("--out", default=d.out_dir, help="folder of the JSON files")
    p.set_defaults(func=bench_entry)


def bench_entry(args: argparse.Namespace) -> None:
    """`ichseg bench`: time what the settings name, print the table and where the JSON went."""
    from ichseg.bench.run import run_bench
    from ichseg.bench.table import format_bench

    # Checked before anything is timed: a bench takes minutes to hours.
    output_dir(args.out, "--out")
    settings = BenchSettings(
        experiments=args.experiments,
        models=args.models,
        sections=args.sections,
        device=args.device,
        repeats=args.repeats,
        warmup_steps=args.warmup_steps,
        warmup_s=args.warmup_s,
        window_s=args.window_s,
        monai_workers=args.monai_workers,
        jobs_per_device=args.jobs_per_device,
        overrides=args.override,
        predict_options=args.predict_option,
        out_dir=args.out,
    )
    result, path = run_bench(settings)
    print(format_bench(result))
    print(f"figures: {path}")
