"""Calibration on synthetic inputs against data-free methods and real calibration (issue #7).

For every development model and ratio, the benchmark's quality metric (``BenchModel.quality``
on the benchmark's evaluation inputs) of

- ``prune``, ``nm``, ``lbyl``: data-free;
- ``lbyl+syn``: calibration mode on ``lbyl_onnx.synthetic.synthetic_inputs(model, N, seed=0)``
  (structured noise mapped to the input range inferred from the model; no user data);
- ``lbyl+cal``: calibration mode on the benchmark's real calibration inputs.

``N`` is 256, or the number of real calibration inputs where the benchmark uses fewer
(PP-OCRv4: 16 images of 640 x 640), so that both calibrations see as many samples. The
verdict column compares ``lbyl+syn`` with the better of ``nm`` and ``lbyl``: ``win`` or
``loss`` beyond ``--tie`` (0.01; the benchmark puts sampling noise at 0.02-0.03 for 256
photo inputs), else ``tie``.

    python scripts/synthetic_study.py --json synthetic.json            # every model
    python scripts/synthetic_study.py --models digits_vgg_bn,centerface
    python scripts/synthetic_study.py --combine a.json b.json          # one table of several runs
    python scripts/synthetic_study.py --models vgg16_tumor --convention "[0,1]" --methods lbyl+syn
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_models import development_models
from benchmark import CALIBRATION_SAMPLES, headline

import lbyl_onnx
from lbyl_onnx.graph.io import load_model
from lbyl_onnx.synthetic import (
    CONVENTIONS,
    Normalisation,
    convention,
    fit_normalisation,
    input_specs,
    synthetic_inputs,
)

METHODS = ("prune", "nm", "lbyl", "lbyl+syn", "lbyl+cal")


def verdict(row: dict, tie: float) -> str:
    """``lbyl+syn`` against the better data-free compensation (``nm``, ``lbyl``)."""
    lower = row["metric"] == "rel_l2"
    q = row["quality"]
    if not {"nm", "lbyl", "lbyl+syn"} <= set(q):
        return "-"
    best = min(q["nm"], q["lbyl"]) if lower else max(q["nm"], q["lbyl"])
    gain = (best - q["lbyl+syn"]) if lower else (q["lbyl+syn"] - best)
    return "win" if gain > tie else "loss" if gain < -tie else "tie"


def study_model(bench, ratios, n: int, log, methods=METHODS, forced: str | None = None) -> dict:
    original = load_model(bench.path)
    units, _ = lbyl_onnx.list_units(original)
    real = bench.calibration(CALIBRATION_SAMPLES)
    count = len(next(iter(real.values())))
    start = time.perf_counter()
    norms = {
        s.name: (
            Normalisation(*convention(forced, s.channels), f"forced {forced}")
            if forced
            else fit_normalisation(original, s.name, input_shapes=bench.input_shapes)
        )
        for s in input_specs(original, bench.input_shapes)
        if s.layout != "dense"
    }
    synthetic = synthetic_inputs(
        original,
        min(CALIBRATION_SAMPLES, count),
        seed=0,
        input_shapes=bench.input_shapes,
        normalisation={k: (v.scale, v.shift) for k, v in norms.items()},
    )
    synthesis = time.perf_counter() - start
    result = {
        "name": bench.name,
        "units": len(units),
        "real_samples": count,
        "synthetic_samples": len(next(iter(synthetic.values()))),
        "synthesis_s": synthesis,
        "normalisation": {
            k: {
                "source": v.source,
                "scale": np.round(v.scale, 4).tolist(),
                "shift": np.round(v.shift, 4).tolist(),
                "reason": v.reason,
            }
            for k, v in norms.items()
        },
        "rows": [],
    }
    log(f"{bench.name}: {len(units)} units, synthesis {synthesis:.1f} s, {result['normalisation']}")
    for ratio in ratios:
        row = {"ratio": ratio, "quality": {}, "seconds": {}}
        for method in methods:
            data = {"lbyl+syn": synthetic, "lbyl+cal": real}.get(method)
            start = time.perf_counter()
            model, _ = lbyl_onnx.prune(
                original,
                ratio=ratio,
                method=method.split("+")[0],
                check=False,
                input_shapes=bench.input_shapes,
                calibration_data=data,
            )
            row["seconds"][method] = time.perf_counter() - start
            key, value = headline(bench.quality(model, n))
            row["metric"], row["quality"][method] = key, value
        result["rows"].append(row)
        cells = " ".join(f"{m} {v:.3f}" for m, v in row["quality"].items())
        log(f"  {bench.name} {ratio:.1f} {row['metric']}: {cells}")
    return result


def table(results: list[dict], tie: float) -> list[str]:
    lines = [
        "| model | ratio | metric | prune | nm | lbyl | lbyl+syn | lbyl+cal "
        "| syn vs max(nm, lbyl) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for result in results:
        for row in result["rows"]:
            q = row["quality"]
            cells = " | ".join(f"{q[m]:.3f}" if m in q else "-" for m in METHODS)
            lines.append(
                f"| {result['name']} | {row['ratio']:.1f} | {row['metric']} | {cells} "
                f"| {verdict(row, tie)} |"
            )
    counts = {v: 0 for v in ("win", "tie", "loss", "-")}
    for result in results:
        for row in result["rows"]:
            counts[verdict(row, tie)] += 1
    lines += ["", f"lbyl+syn against max(nm, lbyl): {counts} (tie: within {tie:g})", ""]
    lines += [
        "| model | units | normalisation | samples (syn/real) | synthesis s | "
        "mean s per run: lbyl | lbyl+syn | lbyl+cal |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        norm = "; ".join(
            f"{v['source']} scale {v['scale']} shift {v['shift']}"
            for v in r["normalisation"].values()
        )
        mean = {
            m: np.mean([row["seconds"].get(m, np.nan) for row in r["rows"]]) if r["rows"] else 0.0
            for m in ("lbyl", "lbyl+syn", "lbyl+cal")
        }
        lines.append(
            f"| {r['name']} | {r['units']} | {norm or '-'} | {r['synthetic_samples']}/"
            f"{r['real_samples']} | {r['synthesis_s']:.1f} | {mean['lbyl']:.2f} | "
            f"{mean['lbyl+syn']:.2f} | {mean['lbyl+cal']:.2f} |"
        )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", help="comma-separated development model names")
    parser.add_argument("--ratios", default="0.1,0.2,0.3")
    parser.add_argument("--n", type=int, default=256, help="evaluation inputs (benchmark: 256)")
    parser.add_argument("--tie", type=float, default=0.01)
    parser.add_argument("--methods", default=",".join(METHODS), help="subset of the columns")
    parser.add_argument(
        "--convention",
        choices=CONVENTIONS,
        help="ablation: map synthetic images by this convention instead of the inferred one",
    )
    parser.add_argument("--json", type=Path, help="write the results as JSON")
    parser.add_argument("--combine", type=Path, nargs="+", help="print the table of JSON files")
    args = parser.parse_args()

    if args.combine:
        results = [r for path in args.combine for r in json.loads(path.read_text())["results"]]
        print("\n".join(table(results, args.tie)))
        return 0
    ratios = [float(r) for r in args.ratios.split(",")]
    wanted = set(args.models.split(",")) if args.models else None
    benches = [b for b in development_models() if wanted is None or b.name in wanted]
    if wanted and len(benches) != len(wanted):
        missing = wanted - {b.name for b in benches}
        print(f"not available here: {', '.join(sorted(missing))}", file=sys.stderr)
    start = time.perf_counter()
    methods = [m for m in METHODS if m in args.methods.split(",")]
    results = [
        study_model(
            b,
            ratios,
            args.n,
            lambda s: print(s, file=sys.stderr, flush=True),
            methods,
            args.convention,
        )
        for b in benches
    ]
    total = time.perf_counter() - start
    if args.json:
        record = {"ratios": ratios, "n": args.n, "tie": args.tie, "seconds": total}
        args.json.write_text(json.dumps({**record, "results": results}, indent=1))
    print("\n".join(table(results, args.tie)))
    print(f"\ntotal {total:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
