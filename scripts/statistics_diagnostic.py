"""Per unit of a model: how well data-free sources predict the statistics of real activations.

For every prunable unit, the channels its consumers read (``Unit.record``) are described by
four sources, the first three compared against the last:

- **bn**: predicted from the unit's BatchNormalization alone (``z ~ N(beta, gamma^2)`` through
  the activation; ``lbyl_onnx.methods.moments``), where the unit keeps one with running
  statistics and no max-pool follows the activation (the bias correction's trust rule). It
  predicts standard deviations only where nothing pools between the activation and the
  consumers, and channel correlations of 0 (independent channels);
- **syn**: measured on synthetic inputs (``lbyl_onnx.inputs.synthetic.synthetic_inputs``);
- **prop**: propagated through the graph from the synthetic inputs' moments, re-anchored at
  every BatchNormalization (``scripts/research/propagate.py``; no activation is measured);
- **real**: measured on real inputs (``--real FILE.npz``, arrays named like the model's inputs,
  or ``--bench NAME``: the benchmark's calibration inputs of a development model).

Columns, per source against real: ``r(mean)`` the correlation across channels of the means
(meaningless where the means hardly vary across channels), ``mean err`` the mean over
channels of the absolute error of the mean in units of the real standard deviation,
``sd ratio`` the median over channels of the ratio of standard deviations, ``|dcorr|`` the
mean absolute difference of the off-diagonal channel correlations (``abs dcorr``).
``res@R`` (ratio ``R``, default 0.3): the activation-space residual on real statistics
(relative to plain removal, lower is better) of the compensation solved on real statistics
(``real-fit``), on synthetic ones (``syn-fit``), on propagated ones (``prop-fit``; ``-`` where
the propagation does not reach the unit), on synthetic correlations with the means and
standard deviations that BatchNormalization predicts where it does (``hyb-fit``, a candidate
that calibration mode does not offer), and of data-free LBYL and Neuron Merging.
The real inputs are split in two halves: the real-fit is solved on the first, every
residual is measured on the second (held out); the statistics columns use both.

    python scripts/statistics_diagnostic.py ../shared/models/efficientnet_lite0_bn.onnx \\
        --bench efficientnet_lite0
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from research.mehler import second_moments
from research.propagate import propagated_statistics

from lbyl_onnx import list_units
from lbyl_onnx.graph.io import load_model
from lbyl_onnx.inputs.normalisation import fit_normalisation
from lbyl_onnx.inputs.specs import input_specs
from lbyl_onnx.inputs.synthetic import synthetic_inputs
from lbyl_onnx.methods import METHODS, MethodOptions, kept_count
from lbyl_onnx.methods.calibrated import ActivationStats, solve_calibrated
from lbyl_onnx.methods.criteria import keep_best
from lbyl_onnx.methods.moments import activation_means
from lbyl_onnx.pipeline.solve import trusted_means
from lbyl_onnx.runtime.record import record_statistics


def bn_prediction(unit) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Means and standard deviations of the recorded channels predicted from the unit's
    BatchNormalization (``None`` where it cannot predict them)."""
    bn = unit.arrays.bn
    if not trusted_means(unit):
        return None, None
    model = unit.activation_model
    means = activation_means(bn.beta, bn.gamma, model)
    last = unit.activation or unit.bn
    if last is None or unit.record != last.output[0]:  # pooled: the spread is not predicted
        return means, None
    second = second_moments(bn.beta, np.abs(bn.gamma), model)  # E[act(z)^2], closed form
    return means, np.sqrt(np.maximum(second - means**2, 0.0))


SOURCES = ("bn", "syn", "prop")
STAT_COLUMNS = ("r(mean)", "mean err", "sd ratio", "abs dcorr")


def described(stats: ActivationStats) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Means, standard deviations and correlations of ``stats``."""
    cov = stats.covariance
    return stats.mean, np.sqrt(np.maximum(np.diag(cov), 0.0)), correlation(cov)


def correlation(cov: np.ndarray) -> np.ndarray:
    sd = np.sqrt(np.maximum(np.diag(cov), 0.0))
    safe = np.where(sd > 0, sd, 1.0)
    return cov / safe[:, None] / safe[None, :]


def compare(means, sds, corr, real_means, real_sds, real_corr) -> tuple[str, ...]:
    """The four columns of one source against real statistics ('-' where not predicted)."""
    r_mean = "-"
    if means is not None and np.std(means) > 0 and np.std(real_means) > 0:
        r_mean = f"{np.corrcoef(means, real_means)[0, 1]:.3f}"
    mean_err = "-"
    alive = real_sds > 1e-12 * max(real_sds.max(), 1e-30)
    if means is not None and alive.any():
        mean_err = f"{np.mean(np.abs(means - real_means)[alive] / real_sds[alive]):.3f}"
    ratio = "-"
    if sds is not None and alive.any():
        ratio = f"{np.median(sds[alive] / real_sds[alive]):.3g}"
    dcorr = "-"
    if corr is not None and len(real_corr) > 1:
        off = ~np.eye(len(real_corr), dtype=bool)
        dcorr = f"{np.mean(np.abs(corr[off] - real_corr[off])):.3f}"
    return r_mean, mean_err, ratio, dcorr


def hybrid_stats(syn, means, sds) -> ActivationStats | None:
    """Synthetic statistics with the BatchNormalization's moments where it predicts them:
    means from BN, standard deviations from BN (else synthetic), correlations synthetic."""
    if means is None:
        return None
    cov = syn.covariance
    sd_syn = np.sqrt(np.maximum(np.diag(cov), 0.0))
    sd = sds if sds is not None else sd_syn
    corr = correlation(cov)
    new_cov = corr * sd[:, None] * sd[None, :]
    count = max(syn.count, 1)
    return ActivationStats(means * count, (new_cov + np.outer(means, means)) * count, count)


def _cell(value: float) -> str:
    return "dead" if np.isnan(value) else "-" if np.isinf(value) else f"{value:.3f}"


def residual(stats, scaling: np.ndarray, offsets: np.ndarray | None, kept: np.ndarray) -> float:
    """Activation-space error of ``r_j ~ S_j^T r_P + e_j`` over the removed channels, under
    ``stats``, relative to plain removal (NaN when the removed channels are dead)."""
    cov, mu = stats.covariance, stats.mean
    removed = np.setdiff1d(np.arange(len(mu)), kept)
    if len(removed) == 0:
        return 0.0
    s = scaling[removed]  # (r, m)
    e = np.zeros(len(removed)) if offsets is None else offsets[removed]
    cpp = cov[np.ix_(kept, kept)]
    cross = cov[np.ix_(kept, removed)]  # (m, r)
    var_err = (
        np.diag(cov)[removed] - 2 * np.sum(s * cross.T, 1) + np.einsum("rm,mk,rk->r", s, cpp, s)
    )
    mean_err = mu[removed] - s @ mu[kept] - e
    baseline = float(np.sum(np.diag(cov)[removed] + mu[removed] ** 2))
    if baseline <= 1e-9 * float(np.sum(np.diag(cov) + mu**2)):
        return float("nan")  # the removed channels are dead: nothing to compensate
    return float(np.sum(np.maximum(var_err, 0) + mean_err**2) / baseline)


def real_data(args, model) -> tuple[dict[str, np.ndarray], dict | None, str]:
    if args.bench:
        from bench_models import development_models

        bench = next((b for b in development_models() if b.name == args.bench), None)
        if bench is None:
            raise SystemExit(f"no development model named {args.bench!r} on this machine")
        return bench.calibration(args.n), bench.input_shapes, f"bench {bench.name} calibration"
    with np.load(args.real) as data:
        arrays = {k: data[k] for k in data.files}
    return arrays, None, str(args.real)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--real", type=Path, help="NPZ of real inputs named like the inputs")
    source.add_argument("--bench", help="a development model of scripts/bench_models.py")
    parser.add_argument("--n", type=int, default=256, help="real samples to use (default 256)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic inputs")
    parser.add_argument("--ratio", type=float, default=0.3, help="ratio for the res columns")
    args = parser.parse_args()

    model = load_model(args.model)
    units, _ = list_units(model)
    if not units:
        print("no prunable unit")
        return 0
    real, shapes, label = real_data(args, model)
    names = [s.name for s in input_specs(model, shapes)]
    real = {k: v[: args.n] for k, v in real.items() if k in names}
    count = len(next(iter(real.values())))
    start = time.perf_counter()
    norms = {
        s.name: fit_normalisation(model, s.name, input_shapes=shapes)
        for s in input_specs(model, shapes)
        if s.layout != "dense"
    }
    synthetic = synthetic_inputs(
        model,
        count,
        args.seed,
        shapes,
        normalisation={k: (v.scale, v.shift) for k, v in norms.items()},
    )
    synth_seconds = time.perf_counter() - start
    for name, norm in norms.items():
        print(
            f"input {name}: normalisation {norm.source} "
            f"scale {np.round(norm.scale, 3).tolist()} shift {np.round(norm.shift, 3).tolist()}"
            + (f" ({norm.reason})" if norm.reason else "")
        )
    start = time.perf_counter()
    half = count // 2
    batch = max(1, min(16, half))  # few large inputs (PP-OCRv4: 16) still split in two
    first = {k: v[:half] for k, v in real.items()}
    second = {k: v[half:] for k, v in real.items()}
    fit_half = record_statistics(model, units, first, batch)
    held_out = record_statistics(model, units, second, batch)
    real_stats = {
        name: ActivationStats(
            fit_half[name].total + held_out[name].total,
            fit_half[name].outer + held_out[name].outer,
            fit_half[name].count + held_out[name].count,
        )
        for name in fit_half
    }
    syn_stats = record_statistics(model, units, synthetic, batch)
    recording = time.perf_counter() - start
    start = time.perf_counter()
    prop_stats = propagated_statistics(model, units, synthetic, shapes)
    print(
        f"{count} real inputs ({label}), {count} synthetic; synthesis {synth_seconds:.1f} s, "
        f"recording {recording:.1f} s, propagation {time.perf_counter() - start:.1f} s\n"
    )
    r = args.ratio
    fits = ("real-fit", "syn-fit", "prop-fit", "hyb-fit", "lbyl", "nm")
    header = (
        "| unit | ch | "
        + " | ".join(f"{s} {c}" for s in SOURCES for c in STAT_COLUMNS)
        + f" | res@{r} "
        + " | ".join(fits)
        + " |"
    )
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    summary: dict[str, list[float]] = {}
    live: list[list[float]] = []
    for unit in units:
        rs, ss, ps = real_stats[unit.name], syn_stats[unit.name], prop_stats.get(unit.name)
        real_means, real_cov = rs.mean, rs.covariance
        real_sds = np.sqrt(np.maximum(np.diag(real_cov), 0.0))
        real_corr = correlation(real_cov)
        bn_means, bn_sds = bn_prediction(unit)
        predicted = {
            "bn": (bn_means, bn_sds, np.eye(unit.channels) if bn_means is not None else None),
            "syn": described(ss),
            "prop": described(ps) if ps is not None else (None, None, None),
        }
        cells = []
        for source in SOURCES:
            columns = compare(*predicted[source], real_means, real_sds, real_corr)
            cells += columns
            for name, value in zip(STAT_COLUMNS, columns, strict=True):
                if value != "-":
                    summary.setdefault(f"{source} {name}", []).append(float(value))
        kept = keep_best(unit.arrays.weight, kept_count(unit.channels, r), "l2")
        hybrid = hybrid_stats(ss, bn_means, bn_sds)
        solutions = [
            solve_calibrated(fit_half[unit.name], kept),
            solve_calibrated(ss, kept),
            solve_calibrated(ps, kept) if ps is not None else None,
            solve_calibrated(hybrid, kept) if hybrid is not None else None,
            METHODS["lbyl"](unit.arrays, kept, MethodOptions()),
            METHODS["nm"](unit.arrays, kept, MethodOptions()),
        ]
        test = held_out[unit.name]
        res = [
            residual(test, s.scaling, s.offsets, kept) if s is not None else np.inf
            for s in solutions
        ]
        if not np.isnan(res[0]):
            live.append(res)
            for key, value in zip(fits, res, strict=True):
                if np.isfinite(value):
                    summary.setdefault(key, []).append(value)
        cells += [_cell(v) for v in res]
        print(f"| {unit.name} | {unit.channels} | " + " | ".join(cells) + " |")
    print("\nmedians over units:")
    for key, values in summary.items():
        print(f"  {key}: {np.median(values):.3f} ({len(values)} units)")
    for k, fit in enumerate(fits[1:3], start=1):
        reached = [row for row in live if np.isfinite(row[k])]
        wins = sum(row[k] < min(row[-2], row[-1]) for row in reached)
        print(
            f"  {fit} residual below both data-free methods in {wins} of {len(reached)} units "
            f"it reaches ({len(live)} with live removed channels)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
