"""Errors a user can cause, each with the exit code the command line documents; and the
sizes past which an input is refused up front (:func:`size_problem`)."""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterable

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_VALIDATION_FAILED = 3
EXIT_NOT_VALIDATED = 4
EXIT_INTERRUPTED = 130
"""Interrupted (SIGINT, Ctrl-C): 128 + the signal's number, as shells report it."""


class LbylError(Exception):
    """Base of the errors with a one-line message for the user."""

    exit_code = EXIT_INTERNAL


class UsageError(LbylError):
    """Bad options, unreadable or invalid input, unusable output path (exit 2)."""

    exit_code = EXIT_USAGE


class RewriteError(LbylError):
    """The rewritten model failed the ONNX checker: a bug in the tool (exit 1)."""

    exit_code = EXIT_INTERNAL


class ValidationFailed(LbylError):
    """The pruned model does not load, does not run, or changed its outputs' form (exit 3)."""

    exit_code = EXIT_VALIDATION_FAILED

    def __init__(self, message: str, report=None) -> None:
        super().__init__(message)
        self.report = report


def first_line(error: BaseException | None) -> str:
    """The first line of an error's message (at most 300 characters), else its type."""
    text = str(error).strip().splitlines() if error else []
    return text[0][:300] if text else type(error).__name__


MAX_ELEMENTS = 2**31
"""The most elements one array the tool makes or reads may hold (an input batch it draws,
a ``.npy`` it loads, a constant it evaluates)."""

FALLBACK_MEMORY = 8 << 30
"""The memory assumed where the machine's cannot be read."""


def memory_bytes() -> int:
    """This machine's memory: physical memory, or the container's limit where lower (cgroup
    v2 ``memory.max``, v1 ``memory.limit_in_bytes``); :data:`FALLBACK_MEMORY` where unknown."""
    sizes = []
    with contextlib.suppress(AttributeError, OSError, ValueError):
        sizes.append(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    for limit in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(limit) as stream:
                sizes.append(int(stream.read().strip()))
        except (OSError, ValueError):  # absent, or "max"
            continue
    sizes = [size for size in sizes if size > 0]
    return min(sizes) if sizes else FALLBACK_MEMORY


def memory_limit() -> int:
    """The most bytes one array may take: half of :func:`memory_bytes` (the tool holds a few
    such arrays at once, and onnxruntime its activations beside them)."""
    return memory_bytes() // 2


def size_problem(what: str, shape: Iterable[int], itemsize: int) -> str | None:
    """Why an array of ``shape`` with ``itemsize`` bytes per element is refused (``what`` it
    is, named for the user), or None. The rule: at most :data:`MAX_ELEMENTS` elements, and
    at most :func:`memory_limit` bytes."""
    dims = [int(d) for d in shape]
    elements = math.prod(dims)
    size = elements * itemsize
    limit = memory_limit()
    if elements <= MAX_ELEMENTS and size <= limit:
        return None
    return (
        f"{what} {dims} would take {human_bytes(size)} ({elements:,} elements): over the "
        f"limit of one array, 2^31 elements and {human_bytes(limit)} (half of this machine's "
        "memory)"
    )


def human_bytes(size: int) -> str:
    """``size`` in bytes, as ``12.3 GiB``."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if value < 1024 or unit == "PiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"  # pragma: no cover
