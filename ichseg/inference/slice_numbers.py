"""Slice numbers as a reader looks them up.

ichseg numbers a scan's slices 1..N along its axial axis (`ichseg.inference.volumes.summarize`).
A DICOM viewer shows each image's InstanceNumber instead, which a writer may start anywhere and
run in either direction; `ichseg predict` records it per slice with hemorrhage
(`dicom.instances_with_hemorrhage` in the JSON). Text for the console and the one-page PNG gives
both where they differ: "slices 12-14 (instances 21-23)".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

UNKNOWN = "?"  # an image without an InstanceNumber


def instance_numbers(summary: Mapping) -> dict[int, int | None]:
    """Slice number -> InstanceNumber of the slices a predict summary maps ({} for NIfTI)."""
    hits = (summary.get("dicom") or {}).get("instances_with_hemorrhage") or []
    return {
        int(hit["slice"]): None
        if hit.get("instance_number") is None
        else int(hit["instance_number"])
        for hit in hits
    }


def _runs(numbers: Sequence[int | None]) -> str:
    """Numbers in their order, each run of steps +1 (or each of -1) as `a-b`: `3-5, 9, 14-12`."""
    runs: list[list[int | None]] = []
    for n in numbers:
        last = runs[-1] if runs else None
        if last is not None and n is not None and last[-1] is not None:
            step = n - last[-1]
            if abs(step) == 1 and (len(last) == 1 or last[-1] - last[-2] == step):
                last.append(n)
                continue
        runs.append([n])
    text = [
        UNKNOWN if r[0] is None else f"{r[0]}-{r[-1]}" if len(r) > 1 else f"{r[0]}" for r in runs
    ]
    return ", ".join(text)


def slices_text(slices: Sequence[int], instances: Mapping[int, int | None]) -> str:
    """`slices 12-14 (instances 21-23)`, or `slice 5` where the instance numbers are the slice
    numbers or not known (`instances` maps none of them)."""
    slices = sorted(slices)
    plural = "s" if len(slices) > 1 else ""
    text = f"slice{plural} {_runs(slices)}"
    if not any(k in instances for k in slices):
        return text
    numbers = [instances.get(k) for k in slices]
    if numbers == slices:
        return text
    return f"{text} (instance{plural} {_runs(numbers)})"
