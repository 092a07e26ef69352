"""The GPU tooling keeps working on a CPU machine: ``benchmarks/gpu_check.sh`` end to end in its tiny
setting, and ``export_speed``'s refusal to time a GPU row that really ran on the CPU."""

from __future__ import annotations

import importlib.util
import os
import re
import site
import subprocess
import venv
from pathlib import Path

import onnx
import onnxruntime
import pytest

from helpers.bundles import tiny_onnx_model

ROOT = Path(__file__).resolve().parent.parent
LINE = re.compile(r"^(\S+)\s+exit=(\S+)\s+(\d+\.\d)s\s+(.*)$")


def _overlay_venv(root: Path) -> Path:
    """A venv that sees this interpreter's packages but installs into itself; returns its python.

    The script's install step runs ``pip install -e .``: with this process's own python it would reinstall
    into the environment the tests run in. A ``.pth`` line adds this interpreter's site folders (their own
    ``.pth`` files included, so the editable install and torch resolve as here) behind the venv's own."""
    venv.create(root, with_pip=False)
    (own,) = (root / "lib").glob("python*/site-packages")
    dirs = [*site.getsitepackages(), site.getusersitepackages()]
    (own / "_tests_see_the_running_env.pth").write_text(f"import site; list(map(site.addsitedir, {dirs!r}))\n")
    return root / "bin" / "python"


@pytest.mark.heavy  # the whole GPU check script: install, train, export (28 s in CI)
def test_gpu_check_runs_on_a_cpu_machine_with_gpu_steps_skipped(tmp_path: Path) -> None:
    out = tmp_path / "out"
    python = _overlay_venv(tmp_path / "venv")
    env = {**os.environ, "OUT": str(out), "GPU_CHECK_TINY": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHON": str(python),
           "GPU_CHECK_WHEELS": str(tmp_path / "no-wheels")}
    res = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    steps = {m[1]: (m[2], m[4]) for m in map(LINE.match, res.stdout.splitlines()) if m}
    assert (out / "summary.txt").read_text().strip() == res.stdout.strip()
    for name in ("install", "environment", "train-cpu", "export"):
        assert steps[name] == ("0", "ok"), steps[name]
        assert (out / f"{name}.log").is_file()
    for name in ("train-cuda-bf16", "train-cuda-fp16", "eval-cuda", "pytest-gpu", "train-speed-cuda"):
        assert steps[name] == ("-", "skipped: no CUDA GPU"), (name, steps[name])
    assert steps["wheels"][1].startswith("skipped: no wheels")
    tensorrt_installed = importlib.util.find_spec("tensorrt") is not None
    assert steps["tensorrt-export"][1] == ("skipped: no CUDA GPU" if tensorrt_installed else
                                           'skipped: not installed (pip install "proxyembed[gpu]", docs/gpu.md)')
    assert steps["ort-cuda-encode"][1].startswith("skipped: onnxruntime has no CUDA provider")
    assert res.stdout.splitlines()[-1] == "done: 4 ok, 0 failed, 8 skipped"


def test_export_speed_never_times_a_gpu_row_that_ran_on_the_cpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = importlib.util.spec_from_file_location("export_speed", ROOT / "benchmarks" / "export_speed.py")
    export_speed = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(export_speed)
    for name in ("fp32.onnx", "int8_gpu.onnx"):
        onnx.save(tiny_onnx_model(), str(tmp_path / name))
    gpu_build = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: gpu_build)
    monkeypatch.setattr(onnxruntime, "preload_dlls", lambda: None, raising=False)
    monkeypatch.setenv("PROXYEMBED_CACHE", str(tmp_path / "cache"))
    with pytest.warns(UserWarning, match="Specified provider"):
        runners = export_speed.gpu_runners(tmp_path, 32)
    assert runners == {}
    log = capsys.readouterr().out
    for row in ("ORT CUDA fp32", "ORT CUDA fp16", "ORT TensorRT int8"):
        assert f"{row}: skipped, ONNX Runtime fell back to CPUExecutionProvider" in log
    assert "native TensorRT rows: skipped, tensorrt is not installed" in log
