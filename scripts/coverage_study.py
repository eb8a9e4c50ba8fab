"""Coverage of real graphs: depthwise groups, residual groups, and every zoo model.

Writes three generated sections of ``docs/benchmarks.md``:

- ``depthwise``: only the depthwise groups pruned, each method against plain removal of the
  groups, with the defaults (bias correction and the judge in depthwise groups) and without
  them; ratios 0.05 (the paper's MobileNet-V2 column) to 0.3;
- ``residual``: only the residual groups pruned (``--prune-residual``);
- ``zoo``: per model, units found (default and with ``--prune-residual``), declined by
  reason, MACs removed at ratio 0.3, and the validation status of each method.

Usage::

    python scripts/fetch_models.py                 # the zoo, once
    python scripts/coverage_study.py [--sections depthwise,residual,zoo] [--n 256]
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from pathlib import Path

import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_models import ROOT, BenchModel, development_models, write_section
from benchmark import _reason_class

from lbyl_onnx import list_units, prune

METHODS = ("prune", "nm", "lbyl")
LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
HEAVY = {"light_vgg19", "light_bvlc_alexnet", "light_zfnet512"}
ZOO_SHAPES = {"ppocrv4_det": {"x": [1, 3, 64, 64]}, "yolov8n_nudenet": {"images": [1, 3, 64, 64]}}


def headline(bench: BenchModel, model: onnx.ModelProto, n: int) -> float:
    quality = bench.quality(model, n)
    return quality.get("accuracy", quality.get("top1_agreement", quality.get("rel_l2")))


def metric_name(bench: BenchModel) -> str:
    return {"labels": "accuracy", "classifier": "top-1 agreement"}.get(bench.kind, "map error")


def only(units, keep) -> tuple[str, ...]:
    """``--exclude`` patterns for every unit but those ``keep`` accepts."""
    return tuple(u.name for u in units if not keep(u))


def is_depthwise(unit) -> bool:
    return bool(unit.regroup)


def is_residual(unit) -> bool:
    return any(note.startswith("residual group") for note in unit.notes)


def group_study(bench: BenchModel, ratios, n: int, residual: bool) -> list[str]:
    model = onnx.load(str(bench.path))
    units, _ = list_units(model, prune_residual=residual)
    exclude = only(units, is_residual if residual else is_depthwise)
    count = len(units) - len(exclude)
    rows = []
    variants = [("default", {})]
    if not residual:
        variants.append(
            ("without bias correction and judge", {"bias_correction": False, "judge": False})
        )
    for ratio in ratios:
        for label, extra in variants:
            cells = []
            for method in METHODS:
                pruned, report = prune(
                    model,
                    ratio=ratio,
                    method=method,
                    exclude=exclude,
                    check=False,
                    prune_residual=residual,
                    input_shapes=bench.input_shapes,
                    synthetic_calibration=False,
                    **extra,
                )
                fell = sum(any("removed plainly" in x for x in u.notes) for u in report.units)
                cell = f"{headline(bench, pruned, n):.3f}"
                cells.append(cell + (f" ({fell} to removal)" if fell else ""))
            rows.append(f"| {bench.name} | {count} | {ratio:g} | {label} | " + " | ".join(cells))
            print(rows[-1], flush=True)
    return rows


def zoo_models() -> list[tuple[str, Path, dict | None]]:
    found = [(p.stem, p, None) for p in sorted(LIGHT.glob("light_*.onnx"))]
    found = [f for f in found if f[0] not in HEAVY or os.environ.get("HEAVY_ZOO")]
    zoo = ROOT / "sample_models" / "zoo"
    for name in ("centerface", "vgg16_tumor", "ppocrv4_det", "yolov8n_nudenet"):
        found.append((name, zoo / f"{name}.onnx", ZOO_SHAPES.get(name)))
    found.append(
        ("efficientnet_lite0", ROOT.parent / "shared/models/efficientnet_lite0_bn.onnx", None)
    )
    found += [(b.name, b.path, b.input_shapes) for b in development_models(include_zoo=False)]
    return [f for f in found if f[1].exists()]


def zoo_row(name: str, path: Path, shapes: dict | None) -> str:
    model = onnx.load(str(path))
    units, declined = list_units(model)
    residual_units, _ = list_units(model, prune_residual=True)
    reasons = Counter(_reason_class(d.reason) for d in declined)
    statuses = []
    removed = ""
    for method in METHODS:
        _, report = prune(
            model,
            ratio=0.3,
            method=method,
            check_n=2,
            input_shapes=shapes,
            synthetic_calibration=False,
        )
        statuses.append(report.validation.status if report.validation else "-")
        if method == "lbyl" and report.before.macs:
            removed = f"{1 - report.after.macs / report.before.macs:.1%}"
    depthwise = sum(is_depthwise(u) for u in units)
    declined_text = ", ".join(f"{k}: {v}" for k, v in sorted(reasons.items())) or "-"
    return (
        f"| {name} | {len(units)} ({depthwise} depthwise) | {len(residual_units)} | "
        f"{declined_text} | {removed} | {' / '.join(statuses)} |"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", default="depthwise,residual,zoo")
    parser.add_argument("--n", type=int, default=256, help="photo inputs per quality figure")
    args = parser.parse_args(argv)
    sections = set(args.sections.split(","))
    benches = {b.name: b for b in development_models()}
    command = "python scripts/coverage_study.py " + " ".join(argv or sys.argv[1:])
    if "depthwise" in sections:
        rows = []
        for name in ("digits_mbv2", "efficientnet_lite0", "centerface"):
            if name in benches:
                rows += group_study(benches[name], (0.05, 0.1, 0.2, 0.3), args.n, False)
        write_section(
            "depthwise",
            [
                f"Generated by `{command.strip()}`. Only the depthwise groups are pruned; the "
                "other units are left whole. digits_mbv2: test accuracy (original 0.991); "
                "EfficientNet-Lite0: top-1 agreement on photo crops; CenterFace: relative L2 "
                "error of the heatmap (lower is better). '(k to removal)': units the judge "
                "sent back to plain removal.",
                "",
                "| model | groups | ratio | settings | prune | nm | lbyl |",
                "|---|---|---|---|---|---|---|",
                *[r + " |" for r in rows],
            ],
        )
    if "residual" in sections:
        rows = []
        for name in ("digits_resnet", "digits_mbv2", "efficientnet_lite0"):
            if name in benches:
                rows += group_study(benches[name], (0.1, 0.2, 0.3), args.n, True)
        write_section(
            "residual",
            [
                f"Generated by `{command.strip()}`. Only the residual groups are pruned "
                "(`--prune-residual`, the other units excluded). Accuracy for the digits models "
                "(originals 0.993 ResNet, 0.991 MobileNet-V2), top-1 agreement for EfficientNet.",
                "",
                "| model | groups | ratio | settings | prune | nm | lbyl |",
                "|---|---|---|---|---|---|---|",
                *[r + " |" for r in rows],
            ],
        )
    if "zoo" in sections:
        rows = []
        for name, path, shapes in zoo_models():
            rows.append(zoo_row(name, path, shapes))
            print(rows[-1], flush=True)
        write_section(
            "zoo",
            [
                f"Generated by `{command.strip()}`. Units with the defaults (depthwise groups "
                "included) and with `--prune-residual`; declined candidates by reason (defaults); "
                "MACs removed by `--ratio 0.3` (lbyl, defaults); validation status of prune / nm / "
                "lbyl at 0.3 ('unavailable': onnxruntime cannot run the original either).",
                "",
                "| model | units | with --prune-residual | declined (by reason) | MACs removed | "
                "validation |",
                "|---|---|---|---|---|---|",
                *rows,
            ],
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
