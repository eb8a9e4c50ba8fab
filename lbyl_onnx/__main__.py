"""The ``lbyl-onnx`` command's entry point, and ``python -m lbyl_onnx``.

An interrupt (SIGINT, Ctrl-C) anywhere ends the command with one line, ``interrupted``, and
exit code 130 (:data:`~lbyl_onnx.errors.EXIT_INTERRUPTED`), never a traceback: during the
start-up imports (NumPy, ONNX, onnxruntime: a second or more, which is why this module and
the package's ``__init__`` import none of them), and during the run
(:mod:`lbyl_onnx.cli` handles it there, after the temporary files are removed).
"""

from __future__ import annotations

import sys

EXIT_INTERRUPTED = 130
"""As :data:`lbyl_onnx.errors.EXIT_INTERRUPTED` (not imported: nothing but ``sys`` is, before
the handler is in place)."""


def main() -> None:
    """Import the command line and run it; exit 130 on an interrupt that reaches here."""
    try:
        from .cli import main as command

        command()
    except KeyboardInterrupt:
        interrupted()


def interrupted() -> None:
    """Say ``interrupted`` on stderr, as :mod:`lbyl_onnx.cli` does, and exit 130."""
    try:
        sys.stderr.write("interrupted\n")
        sys.stderr.flush()
    except (OSError, ValueError):  # stderr closed: the exit code still says it
        pass
    raise SystemExit(EXIT_INTERRUPTED)


if __name__ == "__main__":  # pragma: no cover
    main()
