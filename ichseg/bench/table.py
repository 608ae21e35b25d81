"""The benchmark's figures as plain-text tables: medians with their spread (min-max)."""

from __future__ import annotations


def _spread(summary: dict, digits: int = 1) -> str:
    return (
        f"{summary['median']:.{digits}f} ({summary['min']:.{digits}f}-{summary['max']:.{digits}f})"
    )


def _rows(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    return [line.format(*header), line.format(*("-" * w for w in widths))] + [
        line.format(*r) for r in rows
    ]


def _mib(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f} MiB"


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def _rate_digits(summary: dict) -> int:
    return 1 if summary["median"] >= 10 else 2


def format_bench(result: dict) -> str:
    """Every section present in `result`, one table each, in the JSON's units."""
    out = [
        f"ichseg bench on {result['device']} ({result['hardware'].get('processor')}), "
        f"torch {result['packages'].get('torch')}, code {result['code_version']}"
    ]
    ceiling = result.get("matmul_ceiling")
    if ceiling:
        out.append(
            f"matrix-product ceiling: {_spread(ceiling['tflops'], 2)} TFLOP/s "
            f"({ceiling['dtype']}, n={ceiling['n']})"
        )
    cases = result.get("training", {})
    trained = {k: c for k, c in cases.items() if "real" in c}
    if trained:
        header = [
            "case",
            "batch",
            "precision",
            "real img/s",
            "bare img/s",
            "overhead (pairs)",
            "MONAI img/s",
            "vs MONAI",
            "TFLOP/s",
            "of ceiling",
            "peak RSS MiB",
        ]
        rows = []
        for name, c in trained.items():
            real, bare, monai = c["real"], c["bare"], c["monai"]
            d = _rate_digits(real["images_per_s"])
            rss = max(p["memory"]["peak_rss_mb"] for p in (real, monai))
            gpu = real["memory"].get("peak_gpu_mb")
            rows.append(
                [
                    name,
                    str(c["batch_size"]),
                    c["precision"],
                    _spread(real["images_per_s"], d),
                    _spread(bare["images_per_s"], d),
                    _spread(c["pairs"], 3),
                    f"{_spread(monai['images_per_s'], d)} [{monai['workers']}w]",
                    f"{c['speedup_vs_monai_loader']:.2f}x",
                    f"{c['achieved_tflops']:.3f}",
                    _pct(c["fraction_of_matmul_ceiling"])
                    if "fraction_of_matmul_ceiling" in c
                    else "-",
                    f"{rss:.0f}" + (f" (GPU {gpu:.0f})" if gpu is not None else ""),
                ]
            )
        out += ["", "training throughput (median (min-max) over timed windows)"]
        out += _rows(header, rows)
    epochs = {k: c["epoch"] for k, c in cases.items() if "epoch" in c}
    if epochs:
        header = [
            "case",
            "val s",
            "last.ckpt s",
            "checkpoint s",
            "epoch s",
            "train",
            "val",
            "last.ckpt",
            "checkpoint",
        ]
        rows = []
        for name, e in epochs.items():
            split = e.get("split")
            shares = (
                [
                    _pct(split["share"][k])
                    for k in ("train", "validation", "save_last", "checkpoint")
                ]
                if split
                else ["-"] * 4
            )
            rows.append(
                [
                    name,
                    _spread(e["validation_s"], 3),
                    _spread(e["save_last_s"], 3),
                    _spread(e["checkpoint_epoch_writes_s"], 3),
                    f"{split['epoch_s']:.2f}" if split else "-",
                    *shares,
                ]
            )
        out += ["", "an epoch's time (checkpoint share amortised over checkpoint_every epochs)"]
        out += _rows(header, rows)
    jobs = result.get("jobs_per_device")
    if jobs:
        header = ["jobs", "threads/job", "total img/s", "gain", "per-job img/s"]
        rows = [
            [
                n,
                str(r["threads_per_job"] or "-"),
                f"{r['total_images_per_s']:.2f}",
                f"{jobs.get('gain', {}).get(n, float('nan')):.2f}x",
                ", ".join(f"{j['median']:.2f}" for j in r["per_job_images_per_s"]),
            ]
            for n, r in jobs["runs"].items()
        ]
        out += ["", f"jobs at once on one device ({jobs['model']}, {jobs['experiment']})"]
        out += _rows(header, rows)
    sweep = result.get("paper_sweep")
    if sweep:
        line = (
            f"paper sweep ({sweep['folds']} folds x {', '.join(sweep['models'])} x "
            f"{sweep['epochs']} epochs) projected: {sweep['hours_one_job_at_a_time']:.1f} h "
            "one job at a time"
        )
        if "hours_with_jobs_per_device" in sweep:
            line += (
                f", {sweep['hours_with_jobs_per_device']:.1f} h with "
                f"{sweep['jobs_per_device']} jobs per device"
            )
        out += ["", line]
    prep = result.get("prepare")
    if prep:
        out += [
            "",
            f"ichseg prepare {prep['release']} -> {prep['cache_slices']}-slice "
            f"{prep['cache_size']}² cache: {_spread(prep['seconds'], 2)} s, "
            f"peak RSS {_mib(prep['memory']['peak_rss_mb'])} "
            f"(process at start: {_mib(prep['memory'].get('rss_at_start_mb'))})",
        ]
    pred = result.get("predict")
    if pred:
        options = "".join(f" {o}" for o in pred.get("options", []))
        out += [
            f"ichseg predict{options} ({pred['scan']}, {pred['device']} {pred['precision']}): "
            f"{_spread(pred['wall_s'], 2)} s end to end, {_spread(pred['in_process_s'], 2)} s "
            f"in process, peak RSS {_mib(pred['memory']['peak_rss_mb'])}"
        ]
    return "\n".join(out)
