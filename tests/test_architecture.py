"""The layers of docs/architecture.md, as import contracts (``[tool.importlinter]`` in
pyproject.toml), checked by import-linter on the installed package."""

from __future__ import annotations

from pathlib import Path

import pytest
from importlinter.cli import lint_imports

ROOT = Path(__file__).resolve().parent.parent


def test_import_contracts_hold(capsys: pytest.CaptureFixture[str]) -> None:
    """Every layer imports only the layers below it, only the runtime layer imports
    onnxruntime, the methods import no ONNX, and no package has an import cycle."""
    code = lint_imports(str(ROOT / "pyproject.toml"), no_cache=True, no_logo=True)
    output = capsys.readouterr().out
    assert code == 0, output
    assert "0 broken" in output and "5 kept" in output, output


def test_a_broken_contract_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The checker is not vacuous: a contract the package breaks (the methods import
    NumPy) fails."""
    config = tmp_path / "contracts.toml"
    config.write_text(
        '[tool.importlinter]\nroot_package = "lbyl_onnx"\ninclude_external_packages = true\n\n'
        '[[tool.importlinter.contracts]]\nname = "methods without numpy"\ntype = "forbidden"\n'
        'source_modules = ["lbyl_onnx.methods"]\nforbidden_modules = ["numpy"]\n'
    )
    code = lint_imports(str(config), no_cache=True, no_logo=True)
    output = capsys.readouterr().out
    assert code != 0 and "BROKEN" in output, output
