"""Choosing channels from the activations (``--criterion reconstruction``) against the
weights' L2 norm, in calibration mode.

For each development model with prunable units and each ratio, it prunes with
``--calibration-data`` (256 samples, as ``benchmark.py``'s ``lbyl+cal``) twice, with
``--criterion l2`` and ``--criterion reconstruction``, and measures quality as
``benchmark.py`` does; a tie is within 0.005. At the ``--gap-at`` ratio it also runs the
default without data (synthetic calibration, ``l2``) and the same with ``reconstruction``, and
gives the share of the gap between the default and the original that calibration mode closes
with each criterion (issue #7's target: at least half on every classifier). Times are the
tool's, in process, without validation. Writes the section between the ``selection`` markers
of ``docs/benchmarks.md``.

    python scripts/selection_study.py [--n 256] [--models a,b] [--ratios 0.1,...,0.5]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_models import (
    TIE,
    development_models,
    generated_by,
    merged_rows,
    prunable_models,
    tally,
    verdict,
    write_section,
)
from benchmark import CALIBRATION_SAMPLES, headline

import lbyl_onnx
from lbyl_onnx.graph.io import load_model

SECTION = "selection"


def gap_closed(calibrated: float, default: float, original: float) -> str:
    """The share of the default's distance to the original that ``calibrated`` makes up."""
    gap = original - default
    return f"{(calibrated - default) / gap:.0%}" if abs(gap) >= TIE else "no gap"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=256, help="evaluation inputs")
    parser.add_argument("--models", help="comma-separated subset")
    parser.add_argument("--ratios", default="0.1,0.2,0.3,0.4,0.5")
    parser.add_argument("--gap-at", type=float, default=0.3)
    args = parser.parse_args(argv)
    rows = []
    for bench in prunable_models(args.models):
        original = load_model(bench.path)
        calibration = bench.calibration(CALIBRATION_SAMPLES)
        key, reference = headline(bench.quality(original, args.n))
        for ratio in [float(r) for r in args.ratios.split(",")]:
            runs = [("l2", calibration), ("reconstruction", calibration)]
            if abs(ratio - args.gap_at) < 1e-9:
                runs += [("l2", None), ("reconstruction", None)]
            quality, seconds = [], []
            for criterion, data in runs:
                start = time.perf_counter()
                model, _ = lbyl_onnx.prune(
                    original,
                    ratio=ratio,
                    criterion=criterion,
                    calibration_data=data,
                    check=False,
                    input_shapes=bench.input_shapes,
                )
                seconds.append(time.perf_counter() - start)
                quality.append(headline(bench.quality(model, args.n))[1])
            cells = [f"{q:.3f}" for q in quality[:2]] + [verdict(quality[1], quality[0], key, TIE)]
            if len(quality) == 4 and key != "rel_l2":
                default = quality[2]
                cells += [f"{quality[2]:.3f}", f"{quality[3]:.3f}"]
                cells += [gap_closed(q, default, reference) for q in quality[:2]]
            elif len(quality) == 4:
                cells += [f"{quality[2]:.3f}", f"{quality[3]:.3f}", "", ""]
            else:
                cells += ["", "", "", ""]
            cells += [f"{s:.1f}" for s in seconds[:2]]
            row = f"| {bench.name} | {ratio:.1f} | {key} | {reference:.3f} | " + " | ".join(cells)
            rows.append(row + " |")
            print(rows[-1], flush=True)
    merged = merged_rows(SECTION, rows, [m.name for m in development_models()])
    lines = [
        generated_by("selection_study.py", argv or sys.argv[1:], merged, rows)
        + f"Calibration mode on {CALIBRATION_SAMPLES} samples (sequential), the kept channels "
        "chosen by *l2* (the filters' norm) or by *reconstruction* (`--criterion "
        "reconstruction`: from the activations, those that rebuild the consumers' output "
        f"best). A tie: within {TIE}; rel_l2 is an error (lower is better). Reconstruction "
        f"{tally(merged)} against l2. At "
        f"{args.gap_at:.1f}: *default* is the tool without data (synthetic calibration, l2), "
        "*synthetic, reconstruction* the same with `--criterion reconstruction`, and *gap "
        "closed* the share of the default's distance to the original that calibration mode "
        "makes up (classifiers). Seconds: the tool in process, without validation.",
        "",
        "| model | ratio | metric | original | calibrated, l2 | calibrated, reconstruction "
        "| reconstruction against l2 | default | synthetic, reconstruction | gap closed, l2 "
        "| gap closed, reconstruction | l2 s | reconstruction s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        *merged,
    ]
    write_section(SECTION, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
