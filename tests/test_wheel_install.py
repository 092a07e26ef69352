"""The built wheel, installed the way a pip user installs the runtime: a fresh venv, ``proxyembed[cpu]`` (the base
dependencies plus ONNX Runtime's CPU build, see the cpu / gpu extras), binary only.

``pip install --only-binary=:all:`` proves no dependency needs a compiler (hnswlib comes from the
``chroma-hnswlib`` wheels). In that venv: the recipes load as package data, ``index``, ``search`` and
``check`` work without torch, and ``train`` / ``eval`` / ``export`` exit 2 naming the extra. Needs the package
index pip is configured with (the build backend and the base dependencies come from it): where it cannot be
reached the module is skipped, saying so. The wheel is built once per session. Marked ``heavy`` (a venv and an
install from the index): CI runs it in its own step.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import venv
import zipfile
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from helpers.bundles import make_tiny_bundle, write_class_images

REPO = Path(__file__).resolve().parents[1]


def _index_url() -> str:
    """The index pip installs from here: PIP_INDEX_URL, else pip's configuration, else PyPI."""
    if os.environ.get("PIP_INDEX_URL"):
        return os.environ["PIP_INDEX_URL"]
    proc = subprocess.run([sys.executable, "-m", "pip", "config", "get", "global.index-url"], capture_output=True, text=True, timeout=60)
    return proc.stdout.strip() if proc.returncode == 0 and proc.stdout.strip() else "https://pypi.org/simple"


def _reachable(url: str) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)), timeout=5):
            return True
    except OSError:
        return False


INDEX = _index_url()
pytestmark = [
    pytest.mark.heavy,
    pytest.mark.skipif(not _reachable(INDEX), reason=f"the package index {INDEX} cannot be reached: the wheel build and install need it"),
]


def _run(cmd: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    proc = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(REPO)], cwd=out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (built,) = out.glob("proxyembed-*.whl")
    return built


@pytest.fixture(scope="session")
def runtime_venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv with the wheel, its base dependencies and the cpu extra, all from binary wheels; returns its bin folder."""
    root = tmp_path_factory.mktemp("venv")
    venv.create(root, with_pip=True)
    bin_dir = root / "bin"
    proc = _run([str(bin_dir / "python"), "-m", "pip", "install", "-q", "--only-binary=:all:", f"{wheel}[cpu]"], cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return bin_dir


def test_wheel_ships_recipes_and_type_marker(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"proxyembed/py.typed", "proxyembed/recipes/cub200.json", "proxyembed/recipes/sop_nir.json"} <= names
    assert {"proxyembed/runtime/index/core.py", "proxyembed/runtime/backends/ort.py", "proxyembed/export/pipeline.py"} <= names


def test_runtime_install_has_no_torch_and_loads_recipes(runtime_venv: Path, tmp_path: Path) -> None:
    code = (
        "import importlib.util, importlib.metadata as md, json, proxyembed\n"
        "from proxyembed.training.recipes import list_recipes, load_recipe\n"
        "import hnswlib\n"
        "print(json.dumps([importlib.util.find_spec('torch') is None, list_recipes(), load_recipe('cub200')['backbone'],"
        " proxyembed.__version__, [d.metadata['Name'] for d in md.distributions() if 'hnswlib' in d.metadata['Name']]]))\n"
    )
    proc = _run([str(runtime_venv / "python"), "-c", code], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    no_torch, recipes, backbone, version, hnsw = json.loads(proc.stdout)
    assert no_torch and {"cub200", "cars196", "sop", "inshop"} <= set(recipes) and backbone == "resnet50"
    assert hnsw == (["chroma-hnswlib"] if sys.version_info < (3, 13) else ["hnswlib"])
    assert _run([str(runtime_venv / "proxyembed"), "--version"], cwd=tmp_path).stdout.strip() == f"proxyembed {version}"


def test_runtime_commands_work_and_torch_commands_name_the_extra(runtime_venv: Path, tmp_path: Path) -> None:
    cli = str(runtime_venv / "proxyembed")
    bundle = make_tiny_bundle(tmp_path / "bundle")
    write_class_images(tmp_path / "imgs", ("red", "green", "blue"), per_class=3)
    proc = _run([cli, "index", str(bundle), str(tmp_path / "imgs"), "--out", str(tmp_path / "gal"), "--json"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["count"] == 9
    proc = _run([cli, "search", str(tmp_path / "gal"), str(tmp_path / "imgs" / "red" / "red_0.png"), "-k", "2", "--json"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert [r["metadata"]["label"] for r in json.loads(proc.stdout)[0]["results"]] == ["red", "red"]
    check = [cli, "check", str(bundle), "--data", str(tmp_path / "imgs"), "--baseline", str(tmp_path / "base.json"), "--threads", "1"]
    assert _run([*check, "--write-baseline"], cwd=tmp_path).returncode == 0
    proc = _run([*check, "--json"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["status"] == "passed"
    for argv, extra in ((["train", "--recipe", "cub200"], "train"), (["eval", "run"], "train"), (["export", "run", "--out", "b"], "train,export")):
        proc = _run([cli, *argv], cwd=tmp_path)
        assert proc.returncode == 2, (argv, proc.stderr)
        assert proc.stderr.strip().endswith(f'pip install "proxyembed[{extra}]"') and "needs torch" in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr
