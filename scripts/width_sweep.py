"""Every rounded width of a small model: the best speed-up / MAC cut any allocation gets.

The budget benchmark (``budget_benchmark.py``) measures the widths the tool chooses; this
script measures all the others. For each model with few units (the digits models whose
latency falls least with MACs, by default), every combination of kept counts in multiples
of K (``--round-to``, 16 by default: this machine's convolution block) is pruned by plain
removal (the latency of any compensation at the same widths: only weights differ) and
timed with the original in the same interleaved rounds, at the batch of the budget
benchmark's latency columns (:func:`budget_benchmark.timing_feeds`). For each MAC budget
B, the widths that keep at most B of the MACs are the allocations that meet it; the table
gives the largest speed-up / MAC cut among them, and that one again, timed on its own with
the original (the largest of many noisy ratios is biased upwards). Where it is below 0.8,
no allocation in multiples of K gets the issue's 0.8 on this runtime. More combinations
than ``--max-widths`` are sampled (seed 0). Writes the ``width-sweep-round-K`` markers of
``docs/benchmarks.md``; with ``--models``, only those models' rows are replaced.

    python scripts/width_sweep.py [--models digits_vgg_bn,digits_resnet] [--round-to 16]
        [--max-widths 255] [--prune-residual]

With ``--prune-residual`` (the tool's flag: residual groups are units too) the table goes to
the ``width-sweep-round-K-residual`` markers.
"""

from __future__ import annotations

import argparse
import itertools
import random
import sys
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_models import BenchModel, generated_by, merged_rows, prunable_models, write_section
from benchmark import latency_ms
from budget_benchmark import BUDGETS, repeats_for, speed_up, speed_up_ratio, timing_feeds

import lbyl_onnx
from lbyl_onnx.graph.units import Unit
from lbyl_onnx.methods.allocation import candidate_counts

SMALL_MODELS = "digits_vgg_bn,digits_vgg_fused,digits_resnet"


def width_grid(channels: list[int], round_to: int, limit: int) -> list[tuple[int, ...]]:
    """Every combination of allowed kept counts (:func:`candidate_counts`), the original
    widths first; a random sample of ``limit`` (with the original) where there are more."""
    grid = list(itertools.product(*(candidate_counts(n, round_to) for n in channels)))
    original, rest = grid[0], grid[1:]
    if len(rest) > limit:
        rest = random.Random(0).sample(rest, limit)
    return [original, *rest]


def pruned_at(
    bench: BenchModel, units: list[Unit], widths: tuple[int, ...], prune_residual: bool
) -> tuple[onnx.ModelProto, float]:
    """The model with plain removal to ``widths`` (one ``--ratio-for`` per unit), and the
    share of its MACs kept."""
    ratio_for = tuple((u.name, 1.0 - m / u.channels) for u, m in zip(units, widths, strict=True))
    model, report = lbyl_onnx.prune(
        str(bench.path),
        ratio=0.0,
        ratio_for=ratio_for,
        method="prune",
        check=False,
        input_shapes=bench.input_shapes,
        prune_residual=prune_residual,
    )
    return model, report.after.macs / report.before.macs


def best_cells(
    bench: BenchModel,
    feeds: dict[str, np.ndarray],
    base: float,
    widths: list[tuple[int, ...]],
    pruned: list[tuple[onnx.ModelProto, float]],
    ratios: list[float],
    meeting: list[int],
) -> list[str]:
    """The best speed-up / MAC cut among the ``meeting`` widths, their MACs kept, the widths,
    and that speed-up timed again with the original (blank where none meet the budget)."""
    if not meeting:
        return ["", "", "", ""]
    best = max(meeting, key=lambda i: ratios[i])
    model, kept = pruned[best]
    again = latency_ms([str(bench.path), model], feeds, repeats_for(base))
    shown = " / ".join(str(m) for m in widths[best])
    return [f"{ratios[best]:.2f}", f"{kept:.3f}", shown, speed_up(again[0], again[1], kept)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=SMALL_MODELS, help="comma-separated")
    parser.add_argument("--round-to", type=int, default=16)
    parser.add_argument("--max-widths", type=int, default=255)
    parser.add_argument("--prune-residual", action="store_true", help="as the tool's flag")
    args = parser.parse_args(argv)
    rows = []
    for bench in prunable_models(args.models):
        units, _ = lbyl_onnx.list_units(bench.path, args.prune_residual)
        grid = width_grid([u.channels for u in units], args.round_to, args.max_widths)
        feeds, base, _, batch = timing_feeds(bench)
        pruned = [pruned_at(bench, units, w, args.prune_residual) for w in grid[1:]]
        first, *times = latency_ms(
            [str(bench.path), *(m for m, _ in pruned)], feeds, repeats_for(base)
        )
        ratios = [
            speed_up_ratio(first, ms, kept) for ms, (_, kept) in zip(times, pruned, strict=True)
        ]
        for budget in BUDGETS:
            meeting = [i for i, (_, kept) in enumerate(pruned) if kept <= budget + 1e-9]
            cells = [bench.name, str(batch), str(len(pruned)), f"{budget:.1f}", str(len(meeting))]
            cells += best_cells(bench, feeds, base, grid[1:], pruned, ratios, meeting)
            rows.append("| " + " | ".join(cells) + " |")
            print(rows[-1], flush=True)
    name = f"width-sweep-round-{args.round_to}" + ("-residual" if args.prune_residual else "")
    order = [m.name for m in prunable_models()]
    merged = merged_rows(name, rows, order)
    write_section(
        name,
        [
            generated_by("width_sweep.py", argv if argv is not None else sys.argv[1:], merged, rows)
            + f"Every combination of kept counts in multiples of {args.round_to} (at most "
            f"{args.max_widths}, sampled beyond), plain removal, timed with the original in "
            "the same interleaved rounds (onnxruntime, one thread, median of at least 20 "
            "runs, about 2 s), at the batch of the budget tables' latency columns. *best "
            "speed-up / MAC cut*: the largest among the widths that keep at most the budget "
            "of the MACs; *its widths*: the kept counts, units in the order `lbyl-onnx MODEL "
            "--list` prints them; *timed again*: those widths and the original timed once "
            "more, on their own.",
            "",
            "| model | batch | widths timed | budget | widths meeting it | best speed-up / "
            "MAC cut | its MACs kept | its widths | timed again |",
            "|---|---|---|---|---|---|---|---|---|",
            *merged,
        ],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
