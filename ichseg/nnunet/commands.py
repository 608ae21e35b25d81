"""`ichseg nnunet export` and `ichseg nnunet import`: their arguments and entry points."""

from __future__ import annotations

import argparse
from pathlib import Path

from ichseg.arguments import add_command
from ichseg.errors import IchsegError


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add `nnunet` (export, import) to the `ichseg` command."""
    p = add_command(
        commands,
        "nnunet",
        help="export a sweep's slices and folds to nnU-Net v2; import its predictions",
    )
    nn = p.add_subparsers(dest="nnunet_command", required=True)
    q = add_command(
        nn, "export", help="write DatasetNNN_ICH (imagesTr, labelsTr, imagesTs, splits_final.json)"
    )
    q.add_argument("source", metavar="SWEEP_OR_CACHE", help="a sweep folder or a prepared cache")
    q.add_argument(
        "out", nargs="?", metavar="OUT", help="nnU-Net raw folder (default: $nnUNet_raw)"
    )
    q.add_argument("--dataset-id", type=int, required=True, help="nnU-Net dataset id, 1..999")
    q.add_argument(
        "--preprocessed",
        help="also put splits_final.json in PREPROCESSED/DatasetNNN_ICH (default: "
        "$nnUNet_preprocessed, when set)",
    )
    q.set_defaults(func=export_entry)
    q = add_command(
        nn, "import", help="score nnU-Net's fold predictions as the sweep's third architecture"
    )
    q.add_argument(
        "results",
        metavar="NNUNET_RESULTS_FOLDER",
        help="$nnUNet_results/DatasetNNN_ICH or its <trainer>__<plans>__2d folder",
    )
    q.add_argument("sweep", metavar="SWEEP", help="the sweep the dataset was exported from")
    q.add_argument("--folds", help="comma-separated folds to import (default: the sweep's folds)")
    q.set_defaults(func=import_entry)


def export_entry(args: argparse.Namespace) -> None:
    """`ichseg nnunet export`: write the dataset, then the nnU-Net commands that come next."""
    from ichseg.nnunet.export import export_dataset, next_commands
    from ichseg.nnunet.layout import ENV_PREPROCESSED, ENV_RAW, env_folder

    raw = Path(args.out) if args.out else env_folder(ENV_RAW)
    if raw is None:
        raise IchsegError(f"give OUT (the nnU-Net raw folder) or set {ENV_RAW}")
    preprocessed = Path(args.preprocessed) if args.preprocessed else env_folder(ENV_PREPROCESSED)
    done = export_dataset(args.source, raw, args.dataset_id, preprocessed)
    what = "wrote" if done.written else "already holds this export, nothing written:"
    print(
        f"{what} {done.dataset_dir}: {done.n_train} training slices in {done.n_folds} folds "
        f"({done.split_mode} split), {done.n_test} test slices in imagesTs"
    )
    if done.splits_at is not None:
        print(f"ichseg's folds are in {done.splits_at}")
    print("next, with nnU-Net v2 installed:")
    for line in next_commands(done):
        print(f"  {line}")


def import_entry(args: argparse.Namespace) -> None:
    """`ichseg nnunet import`: nnU-Net's fold predictions as job folders of the sweep."""
    from ichseg.nnunet.results import import_results

    folds = None if args.folds is None else _fold_list(args.folds)
    written = import_results(args.results, args.sweep, folds)
    names = ", ".join(p.name for p in written)
    print(f"imported nnU-Net as {len(written)} job folders of {args.sweep}: {names}")
    print(f"next: ichseg report {args.sweep}")


def _fold_list(text: str) -> list[int]:
    """`--folds 0,3`'s fold numbers, or one line saying what was found instead."""
    parts = [part.strip() for part in text.split(",")]
    bad = next((part for part in parts if not part.isdigit()), None)
    if bad is not None:
        found = f"{bad!r} in {text!r}" if text.strip() else "nothing"
        raise IchsegError(
            f"--folds: expected comma-separated fold numbers such as 0,1, found {found}"
        )
    return [int(part) for part in parts]
