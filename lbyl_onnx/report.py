"""What changed, per unit and in total: records, JSON, and a text table."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from .graph.units import Declined
from .runtime.validate import Validation


@dataclass
class ModelSummary:
    """Size of a model: parameters, MACs (at batch 1), serialized bytes, nodes per op type."""

    parameters: int
    macs: int
    size_bytes: int
    op_counts: dict[str, int]


@dataclass
class UnitRecord:
    """One unit: channels before and after, the method, and its restoration residual.

    ``residual`` is the error compensation leaves of the removed channels, relative to plain
    removal (1.0: no better than removing; 0.0: restored exactly): on the filters (data-free)
    or on the measured activations (calibration mode).
    """

    name: str
    op_type: str
    channels_before: int
    channels_after: int
    method: str
    residual: float
    consumers: list[str]
    notes: list[str] = field(default_factory=list)


@dataclass
class Report:
    """Everything a run did, for the summary table and ``--report FILE.json``."""

    tool_version: str
    method: str
    mode: str
    criterion: str
    ratio: float
    units: list[UnitRecord]
    declined: list[Declined]
    before: ModelSummary
    after: ModelSummary
    validation: Validation | None = None
    warnings: list[str] = field(default_factory=list)
    budget: str | None = None
    """With ``--target-macs``/``--target-params``: what the allocation reached."""

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, default=float) + "\n"


def _change(before: int, after: int) -> str:
    if before == 0:
        return "-"
    return f"{100.0 * (after - before) / before:+.1f}%"


def _human(value: float) -> str:
    for unit in ("", "K", "M", "G", "T"):
        if abs(value) < 1000:
            return f"{value:.4g}{unit}"
        value /= 1000
    return f"{value:.4g}P"


def format_units(units: list[UnitRecord], declined: list[Declined]) -> str:
    """Units found and declined, as ``--list`` prints them."""
    lines = [f"{len(units)} prunable unit(s):"]
    for u in units:
        consumers = ", ".join(u.consumers)
        lines.append(f"  {u.name} ({u.op_type}, {u.channels_before} channels) -> {consumers}")
        lines.extend(f"      note: {n}" for n in u.notes)
    lines.append(f"{len(declined)} declined:")
    lines.extend(f"  {d.name} ({d.op_type}): {d.reason}" for d in declined)
    return "\n".join(lines)


def format_report(report: Report, verbose: bool = False) -> str:
    """The summary a person reads after a run."""
    b, a = report.before, report.after
    pruned = [u for u in report.units if u.channels_after < u.channels_before]
    scope = "ratios from the budget" if report.budget else f"ratio {report.ratio:g}"
    lines = [
        f"method {report.method} [{report.mode}], criterion {report.criterion}, {scope}: "
        f"{len(pruned)} unit(s) pruned, {len(report.units) - len(pruned)} unchanged, "
        f"{len(report.declined)} declined",
        "",
        f"{'':12}{'before':>12}{'after':>12}{'change':>10}",
        f"{'parameters':12}{_human(b.parameters):>12}{_human(a.parameters):>12}"
        f"{_change(b.parameters, a.parameters):>10}",
        f"{'MACs':12}{_human(b.macs):>12}{_human(a.macs):>12}{_change(b.macs, a.macs):>10}",
        f"{'file bytes':12}{_human(b.size_bytes):>12}{_human(a.size_bytes):>12}"
        f"{_change(b.size_bytes, a.size_bytes):>10}",
    ]
    if report.budget:
        lines.append(f"budget: {report.budget}")
    changed_ops = {
        op: (b.op_counts.get(op, 0), a.op_counts.get(op, 0))
        for op in sorted(set(b.op_counts) | set(a.op_counts))
        if b.op_counts.get(op, 0) != a.op_counts.get(op, 0)
    }
    if changed_ops:
        ops = ", ".join(f"{op} {x} -> {y}" for op, (x, y) in changed_ops.items())
        lines.append(f"op counts changed: {ops}")
    shown = report.units if verbose else pruned
    if shown:
        width = max(len(u.name) for u in shown)
        lines += ["", f"{'unit':{width}}  {'channels':>11}  {'residual':>8}  notes"]
        for u in shown:
            channels = f"{u.channels_before}->{u.channels_after}"
            notes = "; ".join(u.notes)
            lines.append(f"{u.name:{width}}  {channels:>11}  {u.residual:8.3f}  {notes}")
        lines.append(
            "residual: error left of the removed channels (filters, or activations when "
            "calibrated), relative to plain removal (0 exact, 1 no better)"
        )
    if report.declined:
        lines.append("")
        if verbose:
            lines.append("declined:")
            lines.extend(f"  {d.name} ({d.op_type}): {d.reason}" for d in report.declined)
        else:
            lines.append(f"{len(report.declined)} declined (see --list or -v for reasons)")
    v = report.validation
    if v is not None:
        lines += [
            "",
            f"validation: {v.status} on {v.inputs}" + (f": {v.message}" if v.message else ""),
        ]
        for o in v.outputs:
            top1 = (
                f"  top-1 agreement {o.top1_agreement:.3f}" if o.top1_agreement is not None else ""
            )
            lines.append(
                f"  {o.name}: max abs {o.max_abs:.3g}  mean abs {o.mean_abs:.3g}  "
                f"rel L2 {o.rel_l2:.3g}  cosine {o.cosine:.4f}{top1}"
            )
        if v.status == "passed" and "random" in v.inputs:
            lines.append(
                "  (random inputs are a sanity check, not a measure of accuracy: "
                "pass --input-data with real samples)"
            )
    lines.extend(f"warning: {w}" for w in report.warnings)
    return "\n".join(lines)
