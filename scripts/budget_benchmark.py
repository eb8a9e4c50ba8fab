"""Budgets: quality at equal MACs (global allocation against one uniform ratio) and the
onnxruntime speed-up users get, with and without ``--round-to K`` (8 unless ``--round-to``).

For each development model with prunable units and each MAC budget (0.9, 0.7, 0.5 of the
original), it prunes with ``--target-macs`` (global allocation) and with the uniform ratio
that removes the same MACs (found by bisection), both with closed-form LBYL
(``--closed-form``: synthetic calibration, the default, would take minutes per prune on the
larger models; docs/benchmarks.md gives its one measured cell), measures quality as
``benchmark.py`` does, and the latency (one thread, median) of the global allocation with
and without rounding: at batch 1, and, for models that run in under a millisecond there
(where onnxruntime's per-op overhead hides the MACs), at the batch that makes the original
take about ``BUSY_MS``; the original and its pruned versions are measured in the same
interleaved rounds. Per model, the share of its latency that falls with MACs at all
(:func:`mac_bound_share`) is about what any widths can get. Writes the section between the
``budget`` markers of ``docs/benchmarks.md``;
with ``--models``, only those models' rows are replaced.

    python scripts/budget_benchmark.py [--n 128] [--models a,b] [--round-to 8]
        [--input-range 0,1] [--default-compensation | --latency-budget | --speed-up R]

With ``--round-to`` other than 8 the table goes to the ``budget-round-K`` markers instead;
with ``--input-range R`` (the global allocation's synthetic inputs scaled by convention
``R`` instead of the estimated normalisation; the uniform ratio does not use them) to the
``budget-input-R`` markers. With ``--default-compensation``, both use the tool's default
(LBYL calibrated on synthetic inputs; the global allocation's damage curves are closed-form
LBYL's measured on them) and only quality is measured (the widths' latency is the table's
above): the ``budget-default`` markers. With ``--latency-budget``, ``--target-latency B``
against ``--target-macs B`` (both rounded to K): estimated and measured latency, MACs and
quality; the ``budget-latency-round-K`` markers. With ``--speed-up R``, ``--target-macs B``
alone and with the latency limit ``--target-latency 1 - R (1 - B)`` (the speed-up that
falls R times as much as the MACs), both rounded to K: the ``budget-limit-round-K`` markers
(``-min-keep-F`` appended with ``--min-keep F``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_models import (
    BenchModel,
    development_models,
    generated_by,
    merged_rows,
    prunable_models,
    write_section,
)
from benchmark import headline, latency_feeds, latency_ms

import lbyl_onnx
from lbyl_onnx.config import INPUT_RANGES
from lbyl_onnx.errors import UsageError
from lbyl_onnx.graph.io import load_model

BUDGETS = (0.9, 0.7, 0.5)

BUSY_MS = 20.0
"""Latency of the original at the larger batch measured for models under 1 ms at batch 1."""


def lowest_share(error: UsageError) -> str:
    """The lowest reachable share an unreachable budget's message names (``keeps X of``)."""
    return str(error).split("keeps ")[1].split(" of")[0]


def repeats_for(milliseconds: float) -> int:
    """Runs whose median is taken: at least 20, and about two seconds' worth."""
    return max(20, int(2000 / max(milliseconds, 1e-3)))


def speed_up_ratio(base: float, pruned: float, macs_kept: float) -> float:
    """The latency cut divided by the MAC cut."""
    return (1 - pruned / base) / max(1 - macs_kept, 1e-9)


def speed_up(base: float, pruned: float, macs_kept: float) -> str:
    """:func:`speed_up_ratio`, as a table cell."""
    return f"{speed_up_ratio(base, pruned, macs_kept):.2f}"


def busy_batch(bench: BenchModel, base: float) -> tuple[dict | None, float]:
    """For a model whose batch-1 latency ``base`` is under a millisecond (and whose batch is
    free), feeds of the batch that makes it take about :data:`BUSY_MS`, and that latency;
    else ``(None, base)``."""
    if base >= 1.0:
        return None, base
    batch = int(min(max(BUSY_MS / base, 2), 1024))
    if latency_feeds(bench, 1) is None:
        return None, base  # a fixed batch: only that one is measured
    # the evaluation inputs, repeated up to the batch where there are fewer
    feeds = {k: np.resize(v, (batch, *v.shape[1:])) for k, v in bench.inputs(batch).items()}
    return feeds, latency_ms([str(bench.path)], feeds, repeats_for(BUSY_MS))[0]


def speed_ups(original: str, pruned: list[tuple], feeds: dict, base: float) -> list[str]:
    """For each ``(model, MACs kept)`` in ``pruned``, its latency cut divided by its MAC cut
    (``out of reach`` where the model is ``None``), the original (about ``base`` ms) measured
    in the same interleaved rounds."""
    made = [(model, kept) for model, kept in pruned if model is not None]
    first, *times = latency_ms([original, *(m for m, _ in made)], feeds, repeats_for(base))
    cells = iter([speed_up(first, ms, kept) for ms, (_, kept) in zip(times, made, strict=True)])
    return [next(cells) if model is not None else "out of reach" for model, _ in pruned]


def mac_bound_share(original, bench: BenchModel, feeds: dict, base: float, round_to: int) -> str:
    """The share of the original's latency that falls with its MACs: the slope ``b`` of the
    least-squares line ``t / t0 = a + b m`` through the original and plain removal at MAC
    budgets 0.9, 0.75, 0.6 and 0.45 (those within reach) rounded to ``round_to``, where
    ``t`` is the latency (``t0`` the original's, about ``base`` ms) and ``m`` the MACs kept.
    Where latency is a fixed part plus a part proportional to MACs, every allocation's
    speed-up / MAC cut is ``b``: no choice of widths reaches 0.8 on a model whose ``b`` is
    well below it."""
    models, kept = [str(bench.path)], [1.0]
    for budget in (0.9, 0.75, 0.6, 0.45):
        try:
            model, report = lbyl_onnx.prune(
                original,
                target_macs=budget,
                round_to=round_to,
                method="prune",
                check=False,
                input_shapes=bench.input_shapes,
            )
        except UsageError:
            continue  # out of reach at this rounding
        models.append(model)
        kept.append(report.after.macs / report.before.macs)
    if len(models) < 2:
        return ""
    times = np.array(latency_ms(models, feeds, repeats_for(base)))
    return f"{np.polyfit(kept, times / times[0], 1)[0]:.2f}"


def uniform_ratio_for(original, bench: BenchModel, macs_fraction: float) -> float:
    """The uniform ratio whose MACs come closest to ``macs_fraction`` of the original."""
    low, high = 0.0, 0.95
    for _ in range(12):
        mid = (low + high) / 2
        _, report = lbyl_onnx.prune(
            original, ratio=mid, method="prune", check=False, input_shapes=bench.input_shapes
        )
        if report.after.macs / report.before.macs > macs_fraction:
            low = mid
        else:
            high = mid
    return high


def quality_at_equal_macs(args: argparse.Namespace, argv: list[str] | None) -> int:
    """Global allocation against the uniform ratio at equal MACs, both with the default
    compensation; quality only."""
    rows = []
    for bench in prunable_models(args.models):
        original = load_model(bench.path)
        for budget in BUDGETS:
            options = dict(check=False, input_shapes=bench.input_shapes)
            try:
                start = time.perf_counter()
                global_model, report = lbyl_onnx.prune(original, target_macs=budget, **options)
                global_seconds = time.perf_counter() - start
            except UsageError as error:
                lowest = lowest_share(error)
                rows.append(f"| {bench.name} | {budget:.1f} | out of reach (lowest {lowest}) |")
                rows[-1] += " |" * 6
                print(rows[-1], flush=True)
                continue
            reached = report.after.macs / report.before.macs
            ratio = uniform_ratio_for(original, bench, reached)
            start = time.perf_counter()
            uniform, uniform_report = lbyl_onnx.prune(original, ratio=ratio, **options)
            uniform_seconds = time.perf_counter() - start
            key, q_global = headline(bench.quality(global_model, args.n))
            _, q_uniform = headline(bench.quality(uniform, args.n))
            rows.append(
                f"| {bench.name} | {budget:.1f} | {reached:.3f} | "
                f"{uniform_report.after.macs / uniform_report.before.macs:.3f} ({ratio:.2f}) | "
                f"{q_global:.3f} | {q_uniform:.3f} | {key} | {global_seconds:.1f} | "
                f"{uniform_seconds:.1f} |"
            )
            print(rows[-1], flush=True)
    section = "budget-default"
    merged = merged_rows(section, rows, [m.name for m in development_models()])
    lines = [
        generated_by("budget_benchmark.py", argv or sys.argv[1:], merged, rows)
        + "Both with the default compensation (LBYL calibrated on synthetic inputs). "
        "*global*: `--target-macs B` (its damage curves closed-form LBYL's, measured on "
        "the synthetic inputs); *uniform*: one `--ratio` (in brackets) removing the same MACs. "
        "Seconds: the tool in process, without validation.",
        "",
        "| model | budget | MACs kept, global | MACs kept, uniform (ratio) | quality, global "
        "| quality, uniform | metric | global s | uniform s |",
        "|---|---|---|---|---|---|---|---|---|",
        *merged,
    ]
    write_section(section, lines)
    return 0


def timing_feeds(bench: BenchModel) -> tuple[dict, float, dict, int]:
    """The feeds latency is measured on (batch 1, or the busy batch of :func:`busy_batch`;
    CenterFace: its fixed batch of 10), the original's latency on them in ms, their shapes
    (for ``--input-shape``) and their batch."""
    feeds = latency_feeds(bench, 1) or {k: v[:10] for k, v in bench.inputs(10).items()}
    base = latency_ms([str(bench.path)], feeds, repeats_for(1.0))[0]
    busy_feeds, busy_base = busy_batch(bench, base)
    feeds, base = (busy_feeds, busy_base) if busy_feeds else (feeds, base)
    shapes = {name: list(value.shape) for name, value in feeds.items()}
    return feeds, base, shapes, len(next(iter(feeds.values())))


def latency_limits(args: argparse.Namespace, argv: list[str] | None) -> int:
    """``--target-macs B`` alone and with ``--target-latency 1 - R (1 - B)`` (both rounded to
    K): latency measured with the original's in the same interleaved rounds, MACs, speed-up
    / MAC cut and quality of each."""
    rows = []
    limit_of = {budget: 1 - args.speed_up * (1 - budget) for budget in BUDGETS}
    for bench in prunable_models(args.models):
        original = load_model(bench.path)
        feeds, base, timed_at, batch = timing_feeds(bench)
        for budget in BUDGETS:
            options = dict(
                check=False,
                round_to=args.round_to,
                min_keep=args.min_keep,
                synthetic_calibration=False,
            )
            limited = dict(target_latency=limit_of[budget], input_shapes=timed_at)
            made = []
            try:
                for extra in (limited, dict(input_shapes=bench.input_shapes)):
                    start = time.perf_counter()
                    model, report = lbyl_onnx.prune(
                        original, target_macs=budget, **extra, **options
                    )
                    seconds = time.perf_counter() - start
                    _, quality = headline(bench.quality(model, args.n))
                    made.append((model, report, quality, seconds))
            except UsageError as error:
                row = [bench.name, str(batch), f"{budget:.1f}", f"{limit_of[budget]:.3f}"]
                reach = f"out of reach ({str(error).split()[0]}: lowest {lowest_share(error)})"
                rows.append("| " + " | ".join([*row, reach, *[""] * 9]) + " |")
                print(rows[-1], flush=True)
                continue
            first, *times = latency_ms(
                [str(bench.path), *(m[0] for m in made)], feeds, repeats_for(base)
            )
            row = [bench.name, str(batch), f"{budget:.1f}", f"{limit_of[budget]:.3f}"]
            for (_, report, quality, seconds), ms in zip(made, times, strict=True):
                macs = report.after.macs / report.before.macs
                cells = [f"{macs:.3f}", f"{ms / first:.3f}", speed_up(first, ms, macs)]
                cells.append(f"{quality:.3f}")
                if len(row) == 4:  # with the limit: the tool's estimate, and its time
                    estimate = report.budget.split("latency estimated ")[1].split(" ")[0]
                    cells = [cells[0], estimate, *cells[1:], f"{seconds:.1f}"]
                row += cells
            rows.append("| " + " | ".join(row) + " |")
            print(rows[-1], flush=True)
    section = f"budget-limit-round-{args.round_to}"
    section += f"-min-keep-{args.min_keep:g}" if args.min_keep else ""
    merged = merged_rows(section, rows, [m.name for m in development_models()])
    lines = [
        generated_by("budget_benchmark.py", argv or sys.argv[1:], merged, rows)
        + f"Both rounded to {args.round_to}"
        + (f", never below {args.min_keep:g} of a layer" if args.min_keep else "")
        + ", method lbyl with `--closed-form`. *with the "
        f"limit*: `--target-macs B --target-latency L`, L = 1 - {args.speed_up:g} (1 - B), "
        "profiled by the tool at the batch given; *alone*: `--target-macs B`. Latency kept: "
        "measured afterwards, onnxruntime, one thread, the original and both pruned models "
        "in the same interleaved rounds (at least 20, about 2 s), at batch 1 or, for models "
        f"under 1 ms there, at the batch that makes the original take about {BUSY_MS:.0f} ms "
        "(CenterFace: its fixed batch of 10). Quality as in the tables above.",
        "",
        "| model | batch | budget | latency limit | with the limit: MACs kept | latency "
        "estimated | latency kept | speed-up / MAC cut | quality | tool s | alone: MACs kept "
        "| latency kept | speed-up / MAC cut | quality |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        *merged,
    ]
    write_section(section, lines)
    return 0


def latency_budgets(args: argparse.Namespace, argv: list[str] | None) -> int:
    """``--target-latency B`` against ``--target-macs B``, both rounded to K: the latency
    the tool estimated and the latency measured (the original and both pruned models in the
    same interleaved rounds), MACs, speed-up / MAC cut, quality."""
    rows = []
    for bench in prunable_models(args.models):
        original = load_model(bench.path)
        feeds, base, timed_at, batch = timing_feeds(bench)
        for budget in BUDGETS:
            options = dict(check=False, round_to=args.round_to, synthetic_calibration=False)
            made = []  # per budget: (model, its report, quality, tool seconds), or a message
            for flag, shapes in (("target_latency", timed_at), ("target_macs", bench.input_shapes)):
                try:
                    start = time.perf_counter()
                    model, report = lbyl_onnx.prune(
                        original, **{flag: budget}, input_shapes=shapes, **options
                    )
                    seconds = time.perf_counter() - start
                except UsageError as error:
                    made.append(f"out of reach (lowest {lowest_share(error)})")
                    continue
                _, quality = headline(bench.quality(model, args.n))
                made.append((model, report, quality, seconds))
            present = [m[0] for m in made if not isinstance(m, str)]
            first, *times = latency_ms([str(bench.path), *present], feeds, repeats_for(base))
            measured = iter(times)
            row = [bench.name, str(batch), f"{budget:.1f}"]
            for entry, width in zip(made, (6, 4), strict=True):
                if isinstance(entry, str):
                    row += [entry, *[""] * (width - 1)]
                    continue
                _, report, quality, seconds = entry
                ms, macs = next(measured), report.after.macs / report.before.macs
                cells = [
                    f"{ms / first:.3f}",
                    f"{macs:.3f}",
                    speed_up(first, ms, macs),
                    f"{quality:.3f}",
                ]
                if width == 6:  # the latency budget: the tool's estimate, and its time
                    estimate = report.budget.split("estimated ")[1].split(" of")[0]
                    cells = [estimate, *cells, f"{seconds:.1f}"]
                row += cells
            rows.append("| " + " | ".join(row) + " |")
            print(rows[-1], flush=True)
    section = f"budget-latency-round-{args.round_to}"
    merged = merged_rows(section, rows, [m.name for m in development_models()])
    lines = [
        generated_by("budget_benchmark.py", argv or sys.argv[1:], merged, rows)
        + f"Both rounded to {args.round_to}, method lbyl with `--closed-form`. *latency "
        "budget*: `--target-latency B`, profiled by the tool at the batch given; *MAC "
        "budget*: `--target-macs B`. Latency kept: measured afterwards, onnxruntime, one "
        "thread, the original and both pruned models in the same interleaved rounds (at "
        "least 20, about 2 s), at batch 1 or, for models under 1 ms there, at the batch that "
        f"makes the original take about {BUSY_MS:.0f} ms (CenterFace: its fixed batch of "
        "10). Quality as in the tables above (the two budgets keep different MACs, so their "
        "quality columns are not an equal-MACs comparison).",
        "",
        "| model | batch | budget | latency budget: estimated | latency kept | MACs kept "
        "| speed-up / MAC cut | quality | tool s | MAC budget: latency kept | MACs kept "
        "| speed-up / MAC cut | quality |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        *merged,
    ]
    write_section(section, lines)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=128)
    parser.add_argument("--models", help="comma-separated subset")
    parser.add_argument("--round-to", type=int, default=8)
    parser.add_argument("--input-range", choices=list(INPUT_RANGES))
    parser.add_argument("--default-compensation", action="store_true")
    parser.add_argument("--latency-budget", action="store_true")
    parser.add_argument("--speed-up", type=float, metavar="R")
    parser.add_argument("--min-keep", type=float, default=0.0, help="with --speed-up")
    args = parser.parse_args(argv)
    if args.speed_up is not None:
        return latency_limits(args, argv)
    if args.default_compensation:
        return quality_at_equal_macs(args, argv)
    if args.latency_budget:
        return latency_budgets(args, argv)
    input_range = INPUT_RANGES.get(args.input_range)
    models = prunable_models(args.models)
    rows = []
    for bench in models:
        original = load_model(bench.path)
        feeds = latency_feeds(bench, 1) or {k: v[:10] for k, v in bench.inputs(10).items()}
        base = latency_ms([str(bench.path)], feeds, repeats_for(1.0))[0]
        busy_feeds, busy_base = busy_batch(bench, base)
        share = mac_bound_share(
            original,
            bench,
            busy_feeds or feeds,
            busy_base if busy_feeds else base,
            args.round_to,
        )
        for budget in BUDGETS:
            options = dict(  # the closed-form compensation: seconds per prune, not minutes
                check=False, input_shapes=bench.input_shapes, synthetic_calibration=False
            )
            measured = dict(options, input_range=input_range)
            try:
                global_model, report = lbyl_onnx.prune(original, target_macs=budget, **measured)
            except UsageError as error:  # out of reach: the tool refuses (exit 2)
                lowest = lowest_share(error)
                row = f"| {bench.name} | {budget:.1f} | out of reach (lowest {lowest}) |"
                rows.append(row + " |" * 11)
                print(rows[-1], flush=True)
                continue
            reached = report.after.macs / report.before.macs
            try:
                rounded, rounded_report = lbyl_onnx.prune(
                    original, target_macs=budget, round_to=args.round_to, **measured
                )
                rounded_reached = rounded_report.after.macs / rounded_report.before.macs
            except UsageError:  # the multiples of K do not go low enough
                rounded, rounded_reached = None, None
            ratio = uniform_ratio_for(original, bench, reached)
            uniform, uniform_report = lbyl_onnx.prune(original, ratio=ratio, **options)
            key, q_global = headline(bench.quality(global_model, args.n))
            _, q_uniform = headline(bench.quality(uniform, args.n))
            pruned = [(global_model, reached), (rounded, rounded_reached)]
            at_one = speed_ups(str(bench.path), pruned, feeds, base)
            reached_cell = f"{rounded_reached:.3f}" if rounded else "out of reach"
            cells = [at_one[0], reached_cell, at_one[1]]
            if busy_feeds is None:
                cells += ["", "", ""]
            else:
                batch = len(next(iter(busy_feeds.values())))
                cells += [str(batch), *speed_ups(str(bench.path), pruned, busy_feeds, busy_base)]
            cells.append(share)
            row = (
                f"| {bench.name} | {budget:.1f} | {reached:.3f} | "
                f"{uniform_report.after.macs / uniform_report.before.macs:.3f} ({ratio:.2f}) | "
                f"{q_global:.3f} | {q_uniform:.3f} | {key} | " + " | ".join(cells) + " |"
            )
            rows.append(row)
            print(row, flush=True)
    section = "budget" if args.round_to == 8 else f"budget-round-{args.round_to}"
    if args.input_range:
        section += "-input-" + args.input_range.replace(",", "-")
    merged = merged_rows(section, rows, [m.name for m in development_models()])
    lines = [
        generated_by("budget_benchmark.py", argv or sys.argv[1:], merged, rows)
        + "Method lbyl (data-free compensation). *global*: `--target-macs B` (its damage "
        "measured on 64 synthetic inputs"
        + (f" scaled as `--input-range {args.input_range}`" if args.input_range else "")
        + ", each unit's effect on the outputs on 16, at 70% "
        "and 40% of its channels); "
        "*uniform*: one `--ratio` (in brackets) removing the same MACs. Latency: "
        "onnxruntime, one thread, median of at least 20 runs (about 2 s of them), at batch 1 "
        "(CenterFace: its fixed batch of 10) and, for models under 1 ms there, at the batch "
        f"that makes the original take about {BUSY_MS:.0f} ms; *speed-up / MAC cut* is the "
        "latency cut divided by the MAC cut (1.0 = latency falls in proportion to MACs); "
        "*latency share that falls with MACs*: the slope of the line through the "
        "original's and plain removal's latencies (at the batch of the speed-up columns' "
        "last) against their MACs, both relative to the original's, at four budgets "
        f"rounded to {args.round_to}: the speed-up / MAC cut that any widths get where "
        "latency is a fixed part plus a part proportional to MACs.",
        "",
        "| model | budget | MACs kept, global | MACs kept, uniform (ratio) | quality, global "
        "| quality, uniform | metric | speed-up / MAC cut | MACs kept, round-to "
        f"{args.round_to} | speed-up / MAC cut, round-to {args.round_to} | larger batch "
        f"| speed-up / MAC cut there | same, round-to {args.round_to} "
        f"| latency share that falls with MACs, round-to {args.round_to} |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        *merged,
    ]
    write_section(section, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
