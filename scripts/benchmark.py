"""Benchmark: restoration quality, cost and speed-up of lbyl-onnx on real models.

For each development model present (see ``bench_models.py``), each ratio and each method it
runs the tool through its Python API and measures quality against the labels or the unpruned
model; then, per model, the tool's wall time and peak memory as a command (in a child
process), the floor no tool can beat (load + save + the same onnxruntime validation runs),
and onnxruntime latency of the original and the pruned model. It rewrites the generated part
of ``docs/benchmarks.md`` and one PNG plot per model in ``docs/plots/``.

    python scripts/benchmark.py            # everything (about 60 minutes on 2 cores)
    python scripts/benchmark.py --quick    # fewer inputs and ratios, no latency (< 3 minutes)

Needs the ``bench`` extra; the zoo models need ``python scripts/fetch_models.py`` first.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_models import ROOT, BenchModel, development_models, run_measured, write_section

import lbyl_onnx
from lbyl_onnx.graph.io import load_model

METHODS = ("prune", "nm", "lbyl", "lbyl-nn", "lbyl+syn", "lbyl+cal")
"""``prune``, ``nm``, ``lbyl``, ``lbyl-nn``: the closed forms (``--closed-form``);
``lbyl+syn``: the default, LBYL calibrated on synthetic inputs; ``lbyl+cal``: calibration mode
(sequential) with 256 unlabelled inputs disjoint from the evaluation, the channels chosen by
``l2`` (``scripts/selection_study.py`` compares its default, ``reconstruction``)."""
CALIBRATION_SAMPLES = 256
PLOTS = ROOT / "docs" / "plots"


@dataclass
class Cost:
    """Wall seconds and peak resident memory (MiB) of one child process."""

    seconds: float
    peak_mib: float


FLOOR = """
import json
from lbyl_onnx.graph.io import load_model, save_model
from lbyl_onnx.runtime.validate import validate
model = load_model(sys.argv[1])
validate(model, model, check_n=8, input_shapes=json.loads(sys.argv[3]) or None)
save_model(model, sys.argv[2])
"""


def tool_cost(bench: BenchModel, folder: Path) -> tuple[Cost, Cost, Cost]:
    """The command at ratio 0.3, by default and with ``--closed-form``, and the floor: load,
    the same validation runs (same input shapes), save."""
    args = [str(bench.path), str(folder / "out.onnx"), "--ratio", "0.3", "-q"]
    args += bench.shape_flags()
    command = "from lbyl_onnx.cli import main; main()"
    closed = Cost(*run_measured(command, [*args, "--closed-form"]))
    tool = Cost(*run_measured(command, args))
    shapes = json.dumps(bench.input_shapes or {})
    floor = Cost(*run_measured(FLOOR, [str(bench.path), str(folder / "floor.onnx"), shapes]))
    return tool, closed, floor


def latency_ms(
    models: list[onnx.ModelProto | str], feeds: dict[str, np.ndarray], repeats: int
) -> list[float]:
    """Median onnxruntime latency of each model (one intra-op thread, default graph
    optimisations), measured in ``repeats`` interleaved rounds that run every model once,
    each round in a rotated order: the machine's drift (frequency, other tenants) falls on
    all of them alike instead of on whichever was measured last."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 4
    sessions = []
    for model in models:
        data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
        sessions.append(ort.InferenceSession(data, options, providers=["CPUExecutionProvider"]))
        sessions[-1].run(None, feeds)
    times: list[list[float]] = [[] for _ in sessions]
    for round_ in range(repeats):
        for k in range(len(sessions)):
            index = (round_ + k) % len(sessions)
            start = time.perf_counter()
            sessions[index].run(None, feeds)
            times[index].append(time.perf_counter() - start)
    return [1000 * float(np.median(t)) for t in times]


def latency_feeds(bench: BenchModel, batch: int) -> dict[str, np.ndarray] | None:
    feeds = bench.inputs(batch)
    sess_inputs = ort.InferenceSession(str(bench.path), providers=["CPUExecutionProvider"])
    first = sess_inputs.get_inputs()[0].shape[0]
    if isinstance(first, int) and first != batch:
        return None  # fixed batch size: only that one is measured
    if any(len(v) < batch for v in feeds.values()):
        return None  # a single evaluation input (the document page): batch 1 only
    return {k: v[:batch] for k, v in feeds.items()}


def headline(quality: dict[str, float]) -> tuple[str, float]:
    for key in ("accuracy", "top1_agreement", "rel_l2"):
        if key in quality:
            return key, quality[key]
    raise KeyError(quality)


def measure_model(
    bench: BenchModel, ratios, n: int, with_cost: bool, repeats: int, previous: dict | None
) -> dict:
    """Quality rows (reused from ``previous`` when given), then cost and latency."""
    original = load_model(bench.path)
    units, declined = lbyl_onnx.list_units(original)
    reasons: dict[str, int] = {}
    for d in declined:
        label = _reason_class(d.reason)
        reasons[label] = reasons.get(label, 0) + 1
    result = {
        "name": bench.name,
        "notes": bench.notes,
        "units": len(units),
        "declined": reasons,
        "file_mib": bench.path.stat().st_size / 2**20,
        "rows": [],
    }
    if previous is not None:
        result["original"], result["rows"] = previous["original"], previous["rows"]
        ratios = ()
    else:
        result["original"] = bench.quality(original, n)
    calibration = bench.calibration(CALIBRATION_SAMPLES) if ratios else None
    for ratio in ratios:
        for method in METHODS:
            start = time.perf_counter()
            model, report = lbyl_onnx.prune(
                original,
                ratio=ratio,
                method=method.split("+")[0],
                check=False,
                input_shapes=bench.input_shapes,
                calibration_data=calibration if method.endswith("+cal") else None,
                synthetic_calibration=method.endswith("+syn"),
                criterion="l2",
            )
            seconds = time.perf_counter() - start
            q = bench.quality(model, n)
            result["rows"].append(
                {
                    "ratio": ratio,
                    "method": method,
                    "quality": q,
                    "params": [report.before.parameters, report.after.parameters],
                    "macs": [report.before.macs, report.after.macs],
                    "seconds": seconds,
                }
            )
            print(f"  {bench.name} {ratio:.1f} {method:6s} {q}", flush=True)
    if with_cost and units:
        with tempfile.TemporaryDirectory() as tmp:
            tool, closed, floor = tool_cost(bench, Path(tmp))
            result["cost"] = {
                "tool_s": tool.seconds,
                "tool_mib": tool.peak_mib,
                "closed_s": closed.seconds,
                "closed_mib": closed.peak_mib,
                "floor_s": floor.seconds,
                "floor_mib": floor.peak_mib,
            }
            pruned = str(Path(tmp) / "out.onnx")
            lat = {}
            for batch in (1, 8):
                feeds = latency_feeds(bench, batch)
                if feeds is None:
                    continue
                lat[batch] = latency_ms([str(bench.path), pruned], feeds, repeats)
            result["latency"] = lat
    return result


def _reason_class(reason: str) -> str:
    """A short class of a decline reason, for the table (names of tensors left out)."""
    table = [
        ("residual group", "residual group declined"),
        ("multiplier", "depthwise with channel multiplier"),
        ("depthwise Conv producer", "depthwise producer"),
        ("depthwise Conv", "depthwise consumer"),
        ("grouped", "grouped conv"),
        ("graph output", "graph output in unit"),
        ("not a constant", "non-constant weight"),
        ("shared", "shared weight"),
        ("does not flatten", "reshape that does not flatten"),
    ]
    for needle, label in table:
        if needle in reason:
            return label
    found = re.search(r"read by several nodes \(([^)]*)\)", reason)
    if found:
        return f"read by several nodes ({found.group(1)})"
    found = re.search(r"is (?:input \d+ of|read by) (\w+)", reason)
    if found:
        op = found.group(1)
        return "feeds Add (residual)" if op in ("Add", "Sum") else f"read by {op}"
    return reason


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    key = headline(result["rows"][0]["quality"])[0]
    for method in METHODS:
        rows = [r for r in result["rows"] if r["method"] == method]
        ax.plot(
            [0.0] + [r["ratio"] for r in rows],
            [headline(result["original"])[1] if key != "rel_l2" else 0.0]
            + [r["quality"][key] for r in rows],
            marker="o",
            label=method,
        )
    ax.set_xlabel("ratio of channels removed per unit")
    ax.set_ylabel(key.replace("_", " "))
    ax.set_title(result["name"])
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def render(results: list[dict], command: str, quick: bool) -> list[str]:
    versions = {
        "python": platform.python_version(),
        "onnx": onnx.__version__,
        "onnxruntime": ort.__version__,
        "numpy": np.__version__,
        "lbyl-onnx": lbyl_onnx.__version__,
    }
    import scipy

    versions["scipy"] = scipy.__version__
    lines = [
        f"Generated by `{command}`{' (quick mode)' if quick else ''} on "
        f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()}; "
        + ", ".join(f"{k} {v}" for k, v in versions.items())
        + ".",
        "",
        "### Quality per model, method and ratio",
        "",
        "Digits models: accuracy on the held-out split (original in the header). Classifiers: "
        "top-1 agreement with the unpruned model on photo crops. Maps: relative L2 error of "
        "the output map (lower is better) and IoU of the thresholded map.",
        "",
    ]
    for r in results:
        if not r["rows"]:
            continue
        key, base = headline(r["original"])
        ratios = sorted({row["ratio"] for row in r["rows"]})
        lines += [f"#### {r['name']}", ""]
        if r["notes"]:
            lines += [f"{r['notes']}.", ""]
        if key == "accuracy":
            lines += [f"Original accuracy {base:.4f}.", ""]
        lines += [f"![{r['name']}](plots/{r['name']}.png)", ""]
        header = "| ratio | " + " | ".join(METHODS) + " | params kept | MACs kept |"
        lines += [header, "|---" * (len(METHODS) + 3) + "|"]
        for ratio in ratios:
            rows = {x["method"]: x for x in r["rows"] if x["ratio"] == ratio}
            cells = []
            for m in METHODS:
                q = rows[m]["quality"]
                cell = f"{q[key]:.3f}"
                if "top5_agreement" in q:
                    cell += f" (top-5 {q['top5_agreement']:.3f})"
                if "map_iou" in q:
                    cell += f" (IoU {q['map_iou']:.3f})"
                cells.append(cell)
            p, mac = rows["lbyl"]["params"], rows["lbyl"]["macs"]
            lines.append(
                f"| {ratio:.1f} | "
                + " | ".join(cells)
                + f" | {p[1] / p[0]:.1%} | {mac[1] / max(mac[0], 1):.1%} |"
            )
        lines.append("")
    lines += [
        "### Time of one run (seconds, in process, no validation)",
        "",
        "| model | " + " | ".join(f"{m} at 0.3" for m in METHODS) + " |",
        "|---" * (len(METHODS) + 1) + "|",
    ]
    for r in results:
        cells = {x["method"]: x["seconds"] for x in r["rows"] if x["ratio"] == 0.3}
        if cells:
            lines.append(
                f"| {r['name']} | " + " | ".join(f"{cells[m]:.2f}" for m in METHODS) + " |"
            )
    lines += [
        "",
        "### Units found and declined",
        "",
        "| model | units | declined (by reason) |",
        "|---|---|---|",
    ]
    for r in results:
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(r["declined"].items()))
        lines.append(f"| {r['name']} | {r['units']} | {reasons or '-'} |")
    costs = [r for r in results if "cost" in r]
    if costs:
        lines += [
            "",
            "### Cost of the tool",
            "",
            "`lbyl-onnx IN OUT --ratio 0.3` as a child process (the default: LBYL calibrated "
            "on synthetic inputs; validation on 8 random samples, or on one at the model's "
            "`--input-shape` where its sizes are dynamic), the same with `--closed-form`, and "
            "the floor: load + the same onnxruntime validation runs + save, nothing else, in a "
            "child process too. Peak memory is each child's own high-water mark (`VmHWM`). "
            "*extra / file*: the closed form's peak above the floor's, in file sizes.",
            "",
            "| model | file MiB | tool s | closed-form s | floor s | closed-form / floor "
            "| tool peak MiB | closed-form peak MiB | floor peak MiB | extra / file |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in costs:
            c = r["cost"]
            extra = (c["closed_mib"] - c["floor_mib"]) / max(r["file_mib"], 1e-9)
            lines.append(
                f"| {r['name']} | {r['file_mib']:.1f} | {c['tool_s']:.2f} | {c['closed_s']:.2f} "
                f"| {c['floor_s']:.2f} | {c['closed_s'] / c['floor_s']:.2f} "
                f"| {c['tool_mib']:.0f} | {c['closed_mib']:.0f} | {c['floor_mib']:.0f} "
                f"| {extra:.1f} |"
            )
        lines += [
            "",
            "### onnxruntime latency (ratio 0.3, one thread, default optimisations, median)",
            "",
            "| model | batch | original ms | pruned ms | latency cut | MAC cut | cut ratio |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in costs:
            row = next(x for x in r["rows"] if x["ratio"] == 0.3 and x["method"] == "lbyl")
            mac_cut = 1 - row["macs"][1] / max(row["macs"][0], 1)
            for batch, (a, b) in sorted(r.get("latency", {}).items()):
                cut = 1 - b / a
                lines.append(
                    f"| {r['name']} | {batch} | {a:.2f} | {b:.2f} | {cut:.1%} | {mac_cut:.1%} "
                    f"| {cut / mac_cut if mac_cut else float('nan'):.2f} |"
                )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer inputs and ratios")
    parser.add_argument("--models", help="comma-separated subset of model names")
    parser.add_argument("--json", type=Path, help="also write the raw results as JSON")
    parser.add_argument(
        "--reuse", type=Path, help="take the quality rows from this JSON; measure cost again"
    )
    args = parser.parse_args(argv)
    ratios = (0.1, 0.3, 0.5) if args.quick else (0.1, 0.2, 0.3, 0.4, 0.5)
    n = 64 if args.quick else 256
    models = development_models()
    if args.quick:
        models = [m for m in models if m.name != "vgg16_tumor"]
    if args.models:
        wanted = set(args.models.split(","))
        models = [m for m in models if m.name in wanted]
    reused = {r["name"]: r for r in json.loads(args.reuse.read_text())} if args.reuse else {}
    results = []
    for bench in models:
        print(f"{bench.name}: {bench.path}", flush=True)
        repeats = 5 if args.quick else 10
        previous = reused.get(bench.name)
        results.append(measure_model(bench, ratios, n, not args.quick, repeats, previous))
    PLOTS.mkdir(parents=True, exist_ok=True)
    for r in results:
        if r["rows"]:
            plot(r, PLOTS / f"{r['name']}.png")
    shown = [Path(a).name if os.path.isabs(a) else a for a in (argv or sys.argv[1:])]
    command = " ".join(["python scripts/benchmark.py", *shown])
    write_section("generated", render(results, command, args.quick))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    print(f"wrote docs/benchmarks.md and {len(results)} plot(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
