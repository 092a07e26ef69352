"""The layers of docs/architecture.md, enforced: the import-linter contracts of pyproject.toml ([tool.importlinter]).

import-linter finds a package's modules by walking its folder, but ``proxyembed.runtime`` and
``proxyembed.export`` live in ``runtime/`` and ``export/`` (pyproject's ``package-dir`` mapping), which an
editable install resolves only at import time. So the test copies each mapped folder to its import path,
as a wheel installs them, and lints that copy in a fresh interpreter that finds it first.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: tomli comes with pytest there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
TOP = {"proxyembed.cli", "proxyembed.__main__", "proxyembed.export"}  # may import every stage
LINT = "import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports(config_filename=sys.argv[1], no_cache=True, no_logo=True))"


def _pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def _installed_layout(dst: Path) -> Path:
    """Copy every package folder to where its import name puts it (``runtime/`` -> ``proxyembed/runtime``); returns ``dst``."""
    for package, folder in sorted(_pyproject()["tool"]["setuptools"]["package-dir"].items()):
        shutil.copytree(ROOT / folder, dst.joinpath(*package.split(".")), ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True)
    return dst


def test_import_contracts_hold(tmp_path: Path) -> None:
    tree = _installed_layout(tmp_path / "site")
    env = {**os.environ, "PYTHONPATH": str(tree)}
    res = subprocess.run([sys.executable, "-c", LINT, str(ROOT / "pyproject.toml")], cwd=tree, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    kept = len(_pyproject()["tool"]["importlinter"]["contracts"])
    assert "0 broken" in res.stdout and f"{kept} kept" in res.stdout, res.stdout


def test_the_export_contract_covers_every_module_below_the_cli(tmp_path: Path) -> None:
    """A new module of proxyembed falls under "never imports proxyembed.export" unless it is part of the top layer."""
    package = _installed_layout(tmp_path / "site") / "proxyembed"
    modules = {
        f"proxyembed.{p.stem}" for p in package.iterdir() if (p.suffix == ".py" and p.name != "__init__.py") or (p / "__init__.py").is_file()
    }
    contract = next(c for c in _pyproject()["tool"]["importlinter"]["contracts"] if c["forbidden_modules"] == ["proxyembed.export"])
    assert set(contract["source_modules"]) == modules - TOP
