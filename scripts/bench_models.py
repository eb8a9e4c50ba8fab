"""The development models of the benchmark and how each one's quality is measured.

Each :class:`BenchModel` knows its file, the inputs it is fed (real data: the digits test
split, crops of photos that ship in scikit-image, scikit-learn and matplotlib, a document
scan) and its quality metric against the unpruned model or the labels. Requires the
``bench`` extra.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from photos import (  # noqa: E402
    EFFICIENTNET_LITE_MEAN,
    EFFICIENTNET_LITE_STD,
    PPOCR_MEAN,
    PPOCR_STD,
    page_image,
    photo_batch,
)

from lbyl_onnx.check import session  # noqa: E402

DOC = ROOT / "docs" / "benchmarks.md"


def write_section(name: str, lines: list[str]) -> None:
    """Replace the text between ``<!-- name:start -->`` and ``<!-- name:end -->`` of
    ``docs/benchmarks.md`` (appending the markers if missing), leaving the rest as it is."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    if start not in text:
        text += f"\n{start}\n{end}\n"
    head, _, rest = text.partition(start)
    DOC.write_text(head + "\n".join([start, "", *lines, "", end]) + rest.partition(end)[2])


def merged_rows(name: str, rows: list[str], order: list[str]) -> list[str]:
    """Table rows for section ``name`` of ``docs/benchmarks.md``: ``rows`` (each starting
    with a model's name), plus the section's existing rows of models that ``rows`` does not
    cover, so that a rerun of some models (``--models``) keeps the others' figures; sorted
    by model in ``order``, the rows of one model in their order."""
    text = DOC.read_text() if DOC.exists() else ""
    section = text.partition(f"<!-- {name}:start -->")[2].partition(f"<!-- {name}:end -->")[0]

    def model(row: str) -> str:
        return row.strip("| ").split(" |")[0]

    rerun = {model(r) for r in rows}
    old = [
        line
        for line in section.splitlines()
        if line.startswith("| ") and model(line) in order and model(line) not in rerun
    ]
    return sorted(old + rows, key=lambda r: order.index(model(r)))


PEAK_HOOK = """
import atexit, sys
def _report_peak():
    with open("/proc/self/status") as status:
        peak = next(line.split()[1] for line in status if line.startswith("VmHWM"))
    sys.stderr.write(f"\\nPEAK_KB {peak}\\n")
atexit.register(_report_peak)
"""


def run_measured(
    code: str, argv: list[str], ok_codes: tuple[int, ...] = (0, 4)
) -> tuple[float, float]:
    """Run ``code`` in a fresh interpreter with ``argv``; return wall seconds and peak resident
    memory in MiB, as the child reports it (``VmHWM``, which starts afresh at exec; the
    ``ru_maxrss`` of a child inherits the parent's high-water mark through fork)."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", PEAK_HOOK + code, *argv],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    seconds = time.perf_counter() - start
    if done.returncode not in ok_codes:
        raise RuntimeError(f"exited {done.returncode}: {done.stderr.strip()[-300:]}")
    peak = [line for line in done.stderr.splitlines() if line.startswith("PEAK_KB")]
    return seconds, int(peak[-1].split()[1]) / 1024


SHARED_EFFICIENTNET = ROOT.parent / "shared" / "models" / "efficientnet_lite0_bn.onnx"
ZOO = ROOT / "sample_models" / "zoo"


@dataclass
class BenchModel:
    """A model, its evaluation inputs and its metric.

    ``kind`` is ``labels`` (accuracy on a labelled split), ``classifier`` (top-1/top-5
    agreement with the unpruned model) or ``map`` (relative L2 error and IoU of the
    thresholded map of output ``output``).
    """

    name: str
    path: Path
    kind: str
    inputs: Callable[[int], dict[str, np.ndarray]]
    calibration: Callable[[int], dict[str, np.ndarray]]
    """Unlabelled inputs for calibration mode, disjoint from the evaluation inputs."""
    labels: np.ndarray | None = None
    output: int = 0
    threshold: float = 0.3
    input_shapes: dict[str, list[int]] | None = None
    batch: int = 32
    notes: str = ""
    _reference: dict[int, np.ndarray] = field(default_factory=dict, repr=False)

    def available(self) -> bool:
        return self.path.exists()

    def run(self, model: onnx.ModelProto | str, n: int) -> np.ndarray:
        """Output ``self.output`` on the first ``n`` evaluation inputs, in batches.

        A labelled split is always used whole (``n`` is for generated photo inputs).
        """
        if self.kind == "labels":
            n = len(self.labels)
        feeds = self.inputs(n)
        sess = session(model if isinstance(model, onnx.ModelProto) else str(model))
        name = sess.get_outputs()[self.output].name
        key = next(iter(feeds))
        total = len(feeds[key])
        fixed = sess.get_inputs()[0].shape[0]
        step = fixed if isinstance(fixed, int) else self.batch
        outs = [
            sess.run([name], {k: v[i : i + step] for k, v in feeds.items()})[0]
            for i in range(0, total, step)
        ]
        return np.concatenate(outs)

    def reference(self, n: int) -> np.ndarray:
        if n not in self._reference:
            self._reference[n] = self.run(str(self.path), n)
        return self._reference[n]

    def quality(self, model: onnx.ModelProto, n: int) -> dict[str, float]:
        """The metrics of ``model`` (higher is better except ``rel_l2``)."""
        ref = self.reference(n)
        out = self.run(model, n)
        if self.kind == "labels":
            labels = self.labels
            return {
                "accuracy": float(np.mean(out.argmax(1) == labels)),
                "original": float(np.mean(ref.argmax(1) == labels)),
                "top1_agreement": float(np.mean(out.argmax(1) == ref.argmax(1))),
            }
        if self.kind == "classifier":
            top1 = float(np.mean(out.argmax(1) == ref.argmax(1)))
            result = {"top1_agreement": top1}
            if ref.shape[1] >= 10:
                top5 = np.argsort(-out, axis=1)[:, :5]
                result["top5_agreement"] = float(np.mean((top5 == ref.argmax(1)[:, None]).any(1)))
            return result
        a, b = ref.astype(np.float64), out.astype(np.float64)
        rel = float(np.linalg.norm(a - b) / max(np.linalg.norm(a), 1e-12))
        ma, mb = a > self.threshold, b > self.threshold
        union = np.logical_or(ma, mb).sum()
        iou = float(np.logical_and(ma, mb).sum() / union) if union else 1.0
        return {"rel_l2": rel, "map_iou": iou}


def _digits() -> dict[str, np.ndarray]:
    data = np.load(ROOT / "sample_models" / "digits_test.npz")
    return {"input": data["input"], "label": data["label"]}


def _digits_train(n: int) -> dict[str, np.ndarray]:
    """Unlabelled training-split samples shipped for calibration (disjoint from the test)."""
    data = np.load(ROOT / "sample_models" / "digits_calibration.npz")
    return {"input": data["input"][:n]}


def development_models(include_zoo: bool = True) -> list[BenchModel]:
    """The models the benchmark measures, those present on this machine."""
    digits = _digits()
    models = [
        BenchModel(
            f"digits_{variant}",
            ROOT / "sample_models" / f"digits_{variant}.onnx",
            "labels",
            lambda n: {"input": digits["input"][:n]},
            _digits_train,
            labels=digits["label"],
            batch=256,
        )
        for variant in ("vgg_bn", "vgg_fused", "mlp", "resnet", "mbv2")
    ]
    if not include_zoo:
        return models
    models += [
        BenchModel(
            "efficientnet_lite0",
            SHARED_EFFICIENTNET,
            "classifier",
            lambda n: {"input": photo_batch(n, 224, EFFICIENTNET_LITE_MEAN, EFFICIENTNET_LITE_STD)},
            lambda n: {
                "input": photo_batch(n, 224, EFFICIENTNET_LITE_MEAN, EFFICIENTNET_LITE_STD, seed=1)
            },
            input_shapes={"input": [1, 3, 224, 224]},
            notes="photo crops, ImageNet classes",
        ),
        BenchModel(
            "vgg16_tumor",
            ZOO / "vgg16_tumor.onnx",
            "classifier",
            lambda n: {"input": photo_batch(n, 240, (0, 0, 0), (1, 1, 1), layout="NHWC")},
            lambda n: {"input": photo_batch(n, 240, (0, 0, 0), (1, 1, 1), "NHWC", seed=1)},
            input_shapes={"input": [1, 240, 240, 3]},
            batch=16,
            notes="photo crops (not MRI scans): agreement only",
        ),
        BenchModel(
            "ppocrv4_det",
            ZOO / "ppocrv4_det.onnx",
            "map",
            lambda n: {"x": page_image(640, 640)},
            lambda n: {"x": photo_batch(min(n, 16), 640, PPOCR_MEAN, PPOCR_STD, seed=1)},
            input_shapes={"x": [1, 3, 640, 640]},
            threshold=0.3,
            notes="text probability map of skimage.data.page() at 640x640",
        ),
        BenchModel(
            "centerface",
            ZOO / "centerface.onnx",
            "map",
            lambda n: {
                "input.1": photo_batch(-(-n // 10) * 10, 32, (0, 0, 0), (1, 1, 1), scale=1.0)
            },
            lambda n: {
                "input.1": photo_batch(
                    -(-n // 10) * 10, 32, (0, 0, 0), (1, 1, 1), scale=1.0, seed=1
                )
            },
            threshold=0.05,
            notes="face heatmap on 32x32 photo crops (the file's fixed input size)",
        ),
        BenchModel(
            "yolov8n_nudenet",
            ZOO / "yolov8n_nudenet.onnx",
            "map",
            lambda n: {"images": photo_batch(n, 320, (0, 0, 0), (1, 1, 1))},
            lambda n: {"images": photo_batch(n, 320, (0, 0, 0), (1, 1, 1), seed=1)},
            input_shapes={"images": [1, 3, 320, 320]},
            threshold=0.25,
            notes="negative control: SiLU only, nothing prunable",
        ),
    ]
    return [m for m in models if m.available()]
