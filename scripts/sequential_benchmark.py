"""Calibration mode, independent against ``--sequential``, and how much of the gap between the
best data-free method and the original each closes.

For each development model with prunable units and each ratio, it prunes data-free with
``prune``, ``nm``, ``lbyl`` and ``lbyl-nn`` (the best of them is the cell's data-free
reference), then with ``--calibration-data`` (256 unlabelled inputs disjoint from the
evaluation, as ``benchmark.py``) with and without ``--sequential``, and measures quality as
``benchmark.py`` does. *gap closed* is ``(q - q_free) / (q_original - q_free)``. Also the
tool's time for both calibrated runs (in process, no validation). Writes the section between
the ``sequential`` markers of ``docs/benchmarks.md``; with ``--models``, only those models'
rows are replaced.

    python scripts/sequential_benchmark.py [--n 128] [--models a,b] [--ratios 0.1,0.2,0.3]

VGG16 is left out unless named in ``--models``: one pass over 256 inputs at 240 x 240 takes
about 40 s on 2 cores, and ``--sequential`` makes two per unit (14 units).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_models import development_models, generated_by, merged_rows, write_section
from benchmark import CALIBRATION_SAMPLES, headline

import lbyl_onnx
from lbyl_onnx.graph.io import load_model

DATA_FREE = ("prune", "nm", "lbyl", "lbyl-nn")
SLOW = ("vgg16_tumor", "yolov8n_nudenet")
"""Left out unless named: VGG16 (time, above); YOLOv8n (no prunable unit)."""


def gap_closed(quality: float, free: float, original: float) -> str:
    gap = original - free
    return f"{(quality - free) / gap:.2f}" if abs(gap) > 1e-9 else "-"


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
        original = load_model(bench.path)
        calibration = bench.calibration(CALIBRATION_SAMPLES)
        key, q_original = headline(bench.quality(original, args.n))
        lower = key == "rel_l2"  # an error: lower is better
        for ratio in ratios:
            options = dict(ratio=ratio, check=False, input_shapes=bench.input_shapes)
            free = {}
            for method in DATA_FREE:
                model, _ = lbyl_onnx.prune(original, method=method, **options)
                free[method] = headline(bench.quality(model, args.n))[1]
            best = (min if lower else max)(free, key=free.__getitem__)
            quality, seconds = {}, {}
            for sequential in (False, True):
                start = time.perf_counter()
                model, _ = lbyl_onnx.prune(
                    original, calibration_data=calibration, sequential=sequential, **options
                )
                seconds[sequential] = time.perf_counter() - start
                quality[sequential] = headline(bench.quality(model, args.n))[1]
            row = (
                f"| {bench.name} | {ratio:.1f} | {key} | {q_original:.3f} | "
                f"{free[best]:.3f} ({best}) | {quality[False]:.3f} | {quality[True]:.3f} | "
                f"{gap_closed(quality[False], free[best], q_original)} | "
                f"{gap_closed(quality[True], free[best], q_original)} | "
                f"{seconds[False]:.1f} | {seconds[True]:.1f} |"
            )
            rows.append(row)
            print(row, flush=True)
    merged = merged_rows("sequential", rows, [m.name for m in development_models()])
    lines = [
        generated_by("sequential_benchmark.py", argv or sys.argv[1:], merged, rows)
        + f"Calibration on {CALIBRATION_SAMPLES} unlabelled inputs (lbyl: activation-space "
        "least squares + bias correction), *independent* as calibration mode solves by "
        "default, *sequential* with `--sequential`; *best data-free*: the best of "
        f"{', '.join(DATA_FREE)} in the cell. *gap closed*: the share of the gap between the "
        "best data-free method and the original that calibration closes. rel_l2 is an error "
        "(lower is better); seconds: one run of the tool, in process, without validation.",
        "",
        "| model | ratio | metric | original | best data-free | independent | sequential "
        "| gap closed, independent | gap closed, sequential | independent s | sequential s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *merged,
    ]
    write_section("sequential", lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
