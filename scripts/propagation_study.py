"""Propagated statistics (data-free) against the better of ``nm`` and ``lbyl``, cell by cell.

For each development model with prunable units and each ratio, it prunes with ``nm`` and
``lbyl`` (the closed forms) and with *lbyl+prop*: LBYL's activation-space least squares and
bias correction solved unit by unit (as ``--independent`` calibration does) on statistics
that no inputs were run for: means and channel covariances propagated through the graph
from a model of the input (``scripts/research/propagate.py``; the input's moments are those
of 32 synthetic images). Units the propagation does not reach keep closed-form LBYL. The
tool has no option for this (it is what issue #7 asks to measure before shipping such a
method): the script hands the propagated statistics to the ``--independent`` path in place
of recorded ones. Writes the section between the ``propagation`` markers of
``docs/benchmarks.md``.

    python scripts/propagation_study.py [--n 256] [--models a,b] [--ratios 0.1,0.2,0.3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from unittest import mock

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
from research.propagate import propagated_statistics

import lbyl_onnx
from lbyl_onnx.graph.io import load_model
from lbyl_onnx.inputs.synthetic import synthetic_inputs
from lbyl_onnx.pipeline import run

SECTION = "propagation"
INPUT_SAMPLES = 32


def prune_propagated(original, ratio: float, input_shapes) -> tuple[object, int, int]:
    """The model pruned by LBYL on propagated statistics; how many units they reached, of
    how many."""
    inputs = synthetic_inputs(original, INPUT_SAMPLES, 0, input_shapes)
    reached = []

    def statistics(work, units, _data):
        stats = propagated_statistics(work, units, inputs, input_shapes)
        reached.append((len(stats), len(units)))
        return stats

    with mock.patch.object(run, "record_statistics", statistics):
        model, _ = lbyl_onnx.prune(
            original,
            ratio=ratio,
            method="lbyl",
            criterion="l2",
            sequential=False,
            calibration_data=inputs,
            check=False,
            input_shapes=input_shapes,
        )
    return model, *reached[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=256, help="evaluation inputs")
    parser.add_argument("--models", help="comma-separated subset")
    parser.add_argument("--ratios", default="0.1,0.2,0.3")
    args = parser.parse_args(argv)
    rows = []
    for bench in prunable_models(args.models):
        original = load_model(bench.path)
        for ratio in [float(r) for r in args.ratios.split(",")]:
            quality = {}
            for method in ("nm", "lbyl"):
                model, _ = lbyl_onnx.prune(
                    original,
                    ratio=ratio,
                    method=method,
                    synthetic_calibration=False,
                    check=False,
                    input_shapes=bench.input_shapes,
                )
                key, quality[method] = headline(bench.quality(model, args.n))
            start = time.perf_counter()
            model, reached, units = prune_propagated(original, ratio, bench.input_shapes)
            seconds = time.perf_counter() - start
            key, quality["lbyl+prop"] = headline(bench.quality(model, args.n))
            verdict = against_nm_and_lbyl(quality, "lbyl+prop", key, TIE)
            row = (
                f"| {bench.name} | {ratio:.1f} | {key} | {quality['nm']:.3f} | "
                f"{quality['lbyl']:.3f} | {quality['lbyl+prop']:.3f} | {verdict} | "
                f"{reached} of {units} | {seconds:.1f} |"
            )
            rows.append(row)
            print(row, flush=True)
    merged = merged_rows(SECTION, rows, [m.name for m in development_models()])
    lines = [
        generated_by("propagation_study.py", argv or sys.argv[1:], merged, rows)
        + "*lbyl+prop*: LBYL's activation-space least squares and bias correction, unit by "
        "unit, on means and covariances propagated through the graph (no activation "
        "measured; *reached*: the units it had statistics for, the others closed-form LBYL). "
        f"A tie: within {TIE}. rel_l2 is an error (lower is better). It {tally(merged)} "
        "against the better of nm and lbyl. Seconds: lbyl+prop in process, without validation.",
        "",
        "| model | ratio | metric | nm | lbyl | lbyl+prop | lbyl+prop against max(nm, lbyl) "
        "| reached | lbyl+prop s |",
        "|---|---|---|---|---|---|---|---|---|",
        *merged,
    ]
    write_section(SECTION, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
