"""``--method auto`` against the better of ``nm`` and ``lbyl``, cell by cell.

For each development model with prunable units and each ratio, it prunes with ``nm``,
``lbyl`` and ``auto`` (data-free: the methods chosen on synthetic inputs), measures quality
as ``benchmark.py`` does, and counts the cells where auto wins or ties the better of the
other two (a tie: within 0.005). Also the tool's time for ``auto`` (in process, no
validation). Writes the section between the ``auto`` markers of ``docs/benchmarks.md``.

    python scripts/auto_benchmark.py [--n 128] [--models a,b] [--ratios 0.1,0.2,0.3]
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
    write_section,
)
from benchmark import headline

import lbyl_onnx
from lbyl_onnx.graph.io import load_model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=128)
    parser.add_argument("--models", help="comma-separated subset")
    parser.add_argument("--ratios", default="0.1,0.2,0.3")
    args = parser.parse_args(argv)
    ratios = [float(r) for r in args.ratios.split(",")]
    models = prunable_models(args.models)
    rows = []
    for bench in models:
        original = load_model(bench.path)
        for ratio in ratios:
            quality, seconds, methods = {}, 0.0, ""
            for method in ("nm", "lbyl", "auto"):
                start = time.perf_counter()
                model, report = lbyl_onnx.prune(
                    original,
                    ratio=ratio,
                    method=method,
                    check=False,
                    input_shapes=bench.input_shapes,
                    synthetic_calibration=False,  # nm, lbyl and auto's choices: closed forms
                )
                if method == "auto":
                    seconds = time.perf_counter() - start
                    chosen = [u.method for u in report.units]
                    methods = " ".join(f"{m} {chosen.count(m)}" for m in ("prune", "nm", "lbyl"))
                key, quality[method] = headline(bench.quality(model, args.n))
            verdict = against_nm_and_lbyl(quality, "auto", key, TIE)
            row = (
                f"| {bench.name} | {ratio:.1f} | {key} | {quality['nm']:.3f} | "
                f"{quality['lbyl']:.3f} | {quality['auto']:.3f} | {verdict} | {methods} | "
                f"{seconds:.1f} |"
            )
            rows.append(row)
            print(row, flush=True)
    merged = merged_rows("auto", rows, [m.name for m in development_models()])
    wins = sum(row.split(" | ")[6] != "loss" for row in merged)
    cells = len(merged)
    lines = [
        generated_by("auto_benchmark.py", argv or sys.argv[1:], merged, rows)
        + "Data-free; *auto* chooses per unit among prune, nm and lbyl by the outputs' error "
        "on 16 synthetic inputs (the counts it chose are listed). A tie: within "
        f"{TIE}. rel_l2 is an error (lower is better). Auto wins or ties the better of nm "
        f"and lbyl in **{wins} of {cells}** cells.",
        "",
        "| model | ratio | metric | nm | lbyl | auto | auto against max(nm, lbyl) "
        "| units by method | auto s |",
        "|---|---|---|---|---|---|---|---|---|",
        *merged,
    ]
    write_section("auto", lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
