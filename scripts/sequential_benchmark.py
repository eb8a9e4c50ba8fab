"""Calibration mode, ``--independent`` against ``--sequential`` (its default), and how much
of the gap between the best data-free method and the original each closes.

For each development model with prunable units and each ratio, it prunes data-free with
``prune``, ``nm``, ``lbyl`` and ``lbyl-nn`` (the best of them is the cell's data-free
reference), then runs the command with ``--calibration-data`` (256 unlabelled inputs
disjoint from the evaluation, as ``benchmark.py``), ``--no-check``, in a child process, once
with ``--independent`` and once with ``--sequential`` (both with ``--criterion l2``: the
solving order alone), and measures quality as ``benchmark.py`` does. *gap closed* is
``(q - q_free) / (q_original - q_free)``. Also each command's wall time and peak memory.
Writes the section between the ``sequential`` markers of ``docs/benchmarks.md``; with
``--models``, only those models' rows are replaced.

    python scripts/sequential_benchmark.py [--n 128] [--models a,b] [--ratios 0.1,0.2,0.3]

VGG16 is left out unless named in ``--models``: a ratio takes about 5 minutes there
(``--sequential`` 2-3 of them).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_models import (
    BenchModel,
    development_models,
    generated_by,
    merged_rows,
    run_measured,
    write_section,
)
from benchmark import CALIBRATION_SAMPLES, headline

import lbyl_onnx
from lbyl_onnx.graph.io import load_model

DATA_FREE = ("prune", "nm", "lbyl", "lbyl-nn")
SLOW = ("vgg16_tumor", "yolov8n_nudenet")
"""Left out unless named: VGG16 (time, above); YOLOv8n (no prunable unit)."""


def gap_closed(quality: float, free: float, original: float) -> str:
    gap = original - free
    return f"{(quality - free) / gap:.2f}" if abs(gap) > 1e-9 else "-"


def model_rows(bench: BenchModel, ratios: list[float], data: Path, out: Path, n: int) -> list[str]:
    """One row per ratio: the data-free methods in process, then the command with
    ``--independent`` and ``--sequential`` on the calibration data ``data``."""
    original = load_model(bench.path)
    key, q_original = headline(bench.quality(original, n))
    lower = key == "rel_l2"  # an error: lower is better
    rows = []
    for ratio in ratios:
        options = dict(
            ratio=ratio, check=False, input_shapes=bench.input_shapes, synthetic_calibration=False
        )
        free = {}
        for method in DATA_FREE:
            model, _ = lbyl_onnx.prune(original, method=method, **options)
            free[method] = headline(bench.quality(model, n))[1]
        best = (min if lower else max)(free, key=free.__getitem__)
        quality, cost = {}, {}
        for order in ("--independent", "--sequential"):
            command = [str(bench.path), str(out), "--ratio", str(ratio), order]
            command += ["--calibration-data", str(data), "--no-check", "-q"]
            command += ["--criterion", "l2"]  # the solving order alone: selection_study.py
            command += bench.shape_flags()
            cost[order] = run_measured("from lbyl_onnx.cli import main; main()", command)
            quality[order] = headline(bench.quality(load_model(out), n))[1]
        independent, sequential = quality["--independent"], quality["--sequential"]
        row = (
            f"| {bench.name} | {ratio:.1f} | {key} | {q_original:.3f} | "
            f"{free[best]:.3f} ({best}) | {independent:.3f} | {sequential:.3f} | "
            f"{gap_closed(independent, free[best], q_original)} | "
            f"{gap_closed(sequential, free[best], q_original)} | "
            + " | ".join(f"{cost[o][0]:.1f} s, {cost[o][1]:.0f} MiB" for o in cost)
            + " |"
        )
        rows.append(row)
        print(row, flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=128)
    parser.add_argument("--models", help="comma-separated subset")
    parser.add_argument("--ratios", default="0.1,0.2,0.3")
    args = parser.parse_args(argv)
    ratios = [float(r) for r in args.ratios.split(",")]
    if args.models:
        models = [m for m in development_models() if m.name in args.models.split(",")]
    else:
        models = [m for m in development_models() if m.name not in SLOW]
    rows = []
    for bench in models:
        with tempfile.TemporaryDirectory() as folder:
            data = Path(folder) / "calibration.npz"
            np.savez(data, **bench.calibration(CALIBRATION_SAMPLES))
            rows += model_rows(bench, ratios, data, Path(folder) / "out.onnx", args.n)
    merged = merged_rows("sequential", rows, [m.name for m in development_models()])
    lines = [
        generated_by("sequential_benchmark.py", argv or sys.argv[1:], merged, rows)
        + f"Calibration on {CALIBRATION_SAMPLES} unlabelled inputs (lbyl: activation-space "
        "least squares + bias correction), `--independent` and `--sequential` (calibration "
        "mode's default); *best data-free*: the best of "
        f"{', '.join(DATA_FREE)} in the cell. *gap closed*: the share of the gap between the "
        "best data-free method and the original that calibration closes. rel_l2 is an error "
        "(lower is better). Cost: the command's wall time and peak resident memory, in a "
        "child process, with `--no-check` (load, calibrate, save).",
        "",
        "| model | ratio | metric | original | best data-free | independent | sequential "
        "| gap closed, independent | gap closed, sequential | independent cost "
        "| sequential cost |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *merged,
    ]
    write_section("sequential", lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
