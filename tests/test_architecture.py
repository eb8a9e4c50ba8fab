"""The layers of docs/architecture.md, as import contracts (``[tool.importlinter]`` in
pyproject.toml), checked by import-linter in a child process (it reconfigures logging, which
the suite's log assertions need left alone)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

LINT = (
    "import sys; from importlinter.cli import lint_imports; "
    "sys.exit(lint_imports(sys.argv[1], no_cache=True, no_logo=True))"
)


def _lint(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", LINT, str(config)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )


def test_import_contracts_hold() -> None:
    """Every layer imports only the layers below it, only the runtime layer imports
    onnxruntime, the methods import no ONNX, and no package has an import cycle."""
    result = _lint(ROOT / "pyproject.toml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout and "5 kept" in result.stdout, result.stdout


def test_a_broken_contract_is_reported(tmp_path: Path) -> None:
    """The checker is not vacuous: a contract the package breaks (the methods import
    NumPy) fails."""
    config = tmp_path / "contracts.toml"
    config.write_text(
        '[tool.importlinter]\nroot_package = "lbyl_onnx"\ninclude_external_packages = true\n\n'
        '[[tool.importlinter.contracts]]\nname = "methods without numpy"\ntype = "forbidden"\n'
        'source_modules = ["lbyl_onnx.methods"]\nforbidden_modules = ["numpy"]\n'
    )
    result = _lint(config)
    assert result.returncode != 0 and "BROKEN" in result.stdout, result.stdout
