"""``--synthetic-calibration`` against the better of ``nm`` and ``lbyl``, cell by cell.

For each development model with prunable units and each ratio, it prunes with ``nm`` and
``lbyl`` (data-free) and with ``lbyl --synthetic-calibration`` (calibration mode on synthetic
images made for the model: no data), measures quality as ``benchmark.py`` does, and counts
the cells where the synthetic calibration wins or ties the better of the other two (a tie:
within 0.005). Also the tool's time per run (in process, no validation) and how many
synthetic inputs it made. Writes the section between the ``synthetic`` markers of
``docs/benchmarks.md``.

    python scripts/synthetic_study.py [--n 256] [--models a,b] [--ratios 0.1,0.2,0.3]
    python scripts/synthetic_study.py --models vgg16_tumor --input-range "[0,1]"   # ablation
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_models import (
    TIE,
    against_nm_and_lbyl,
    development_models,
    generated_by,
    merged_rows,
    prunable_models,
    tally,
    write_section,
)
from benchmark import headline

import lbyl_onnx
from lbyl_onnx.graph.io import load_model
from lbyl_onnx.inputs.images import CONVENTIONS
from lbyl_onnx.pipeline.measure import synthetic_calibration_count

SECTION = "synthetic"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=256, help="evaluation inputs")
    parser.add_argument("--models", help="comma-separated subset")
    parser.add_argument("--ratios", default="0.1,0.2,0.3")
    parser.add_argument(
        "--input-range",
        choices=CONVENTIONS,
        help="ablation: scale the synthetic images so instead of as estimated (not written)",
    )
    args = parser.parse_args(argv)
    ratios = [float(r) for r in args.ratios.split(",")]
    models = prunable_models(args.models)
    rows = []
    for bench in models:
        original = load_model(bench.path)
        samples = synthetic_calibration_count(original, bench.input_shapes)
        for ratio in ratios:
            quality, seconds = {}, {}
            for column in ("nm", "lbyl", "lbyl+syn"):
                start = time.perf_counter()
                model, _ = lbyl_onnx.prune(
                    original,
                    ratio=ratio,
                    method=column.split("+")[0],
                    synthetic_calibration=column == "lbyl+syn",
                    input_range=args.input_range,
                    check=False,
                    input_shapes=bench.input_shapes,
                )
                seconds[column] = time.perf_counter() - start
                key, quality[column] = headline(bench.quality(model, args.n))
            verdict = against_nm_and_lbyl(quality, "lbyl+syn", key, TIE)
            row = (
                f"| {bench.name} | {ratio:.1f} | {key} | {quality['nm']:.3f} | "
                f"{quality['lbyl']:.3f} | {quality['lbyl+syn']:.3f} | {verdict} | {samples} | "
                f"{seconds['lbyl']:.1f} | {seconds['lbyl+syn']:.1f} |"
            )
            rows.append(row)
            print(row, flush=True)
    if args.input_range:
        return 0  # an ablation: printed, not written
    merged = merged_rows(SECTION, rows, [m.name for m in development_models()])
    lines = [
        generated_by("synthetic_study.py", argv or sys.argv[1:], merged, rows)
        + "*lbyl+syn*: `--method lbyl --synthetic-calibration` (sequential activation-space "
        "least squares and bias correction, on synthetic images scaled as estimated from the "
        "model; *inputs*: how many it made). A tie: within "
        f"{TIE}. rel_l2 is an error (lower is better). It {tally(merged)} against the "
        "better of nm and lbyl.",
        "",
        "| model | ratio | metric | nm | lbyl | lbyl+syn | lbyl+syn against max(nm, lbyl) "
        "| inputs | lbyl s | lbyl+syn s |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *merged,
    ]
    write_section(SECTION, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
