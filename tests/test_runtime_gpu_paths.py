"""The runtime's GPU paths, checked on a CPU machine: provider options, fall-back warnings, TensorRT shapes.

ONNX Runtime's CPU build is told it has the TensorRT / CUDA providers (``get_available_providers`` is
patched); asking a real session for them then falls back to the CPU exactly as a broken GPU install
would, so the warning, stdout and batch behaviour checked here are those of the real code path.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
from typer.testing import CliRunner

from helpers.bundles import make_tiny_bundle, pattern_image
from proxyembed.cli import app
from proxyembed.runtime import BadInput, Encoder, MissingDependency, backends

pytestmark = pytest.mark.filterwarnings("ignore:Specified provider:UserWarning")  # ORT CPU build on the GPU names

GPU_BUILD = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


@pytest.fixture
def fake_gpu_build(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[str]:
    """ORT claims TensorRT + CUDA providers; preload_dlls calls are recorded; the cache lives under tmp_path."""
    calls: list[str] = []
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: GPU_BUILD)
    monkeypatch.setattr(onnxruntime, "preload_dlls", lambda: calls.append("preload") or print("preload banner"), raising=False)
    monkeypatch.setenv("PROXYEMBED_CACHE", str(tmp_path / "missing" / "parent"))
    backends.preload_cuda_libraries.cache_clear()
    yield calls
    backends.preload_cuda_libraries.cache_clear()


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bundle(tmp_path_factory.mktemp("gpu") / "bundle", with_int8=False)


def test_tensorrt_provider_keeps_file_types_and_has_a_batch_profile(fake_gpu_build: list[str], tmp_path: Path) -> None:
    providers = backends.ort_gpu_providers("images", 32)
    assert [backends.ort._provider_name(p) for p in providers] == GPU_BUILD
    options = providers[0][1]
    assert not {"trt_fp16_enable", "trt_int8_enable"} & set(options)  # weakly typed builds would follow
    assert options["trt_profile_min_shapes"] == "images:1x3x32x32"
    assert options["trt_profile_opt_shapes"] == "images:32x3x32x32"
    assert options["trt_profile_max_shapes"] == f"images:{backends.TRT_EP_MAX_BATCH}x3x32x32"
    cache = tmp_path / "missing" / "parent" / "trt-ep"
    assert options["trt_engine_cache_path"] == str(cache) and cache.is_dir()  # parents created too


def test_cuda_libraries_preloaded_once_with_output_on_stderr(fake_gpu_build: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    backends.ort_gpu_providers("images", 32)
    backends.ort_gpu_providers("images", 32)
    assert fake_gpu_build == ["preload"]
    out, err = capsys.readouterr()
    assert out == "" and "preload banner" in err


def test_cpu_build_neither_preloads_nor_offers_gpu_providers(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(onnxruntime, "preload_dlls", lambda: calls.append("preload"), raising=False)
    backends.preload_cuda_libraries.cache_clear()
    assert backends.ort_gpu_providers("images", 32) == [] and calls == []


def test_gpu_provider_not_in_use_warns_and_auto_falls_back_to_cpu(fake_gpu_build: list[str], bundle_dir: Path) -> None:
    with pytest.warns(RuntimeWarning, match="runs model.onnx on CPUExecutionProvider, not the requested TensorrtExecutionProvider"):
        enc = Encoder(bundle_dir)
    assert enc.provider == "CPUExecutionProvider"
    assert any("fell back to the CPU" in s for s in enc.skipped)
    with pytest.warns(RuntimeWarning), pytest.raises(BadInput, match="device='cuda' but ONNX Runtime could not use a GPU"):
        Encoder(bundle_dir, device="cuda")


def test_no_warning_when_the_cpu_was_asked_for(fake_gpu_build: list[str], bundle_dir: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert Encoder(bundle_dir, device="cpu").provider == "CPUExecutionProvider"


@pytest.mark.parametrize(("installed", "expected"), [
    ({"onnxruntime", "onnxruntime-gpu"}, "both onnxruntime and onnxruntime-gpu are installed"),
    ({"onnxruntime"}, "onnxruntime-gpu is not installed"),
    ({"onnxruntime-gpu"}, None),
])
def test_gpu_install_problem_is_one_line(monkeypatch: pytest.MonkeyPatch, installed: set[str], expected: str | None) -> None:
    from importlib import metadata

    def version(dist: str) -> str:
        if dist not in installed:
            raise metadata.PackageNotFoundError(dist)
        return "1.22.0"

    monkeypatch.setattr(metadata, "version", version)
    problem = backends.gpu_install_problem()
    assert problem == expected if expected is None else (expected in problem and "\n" not in problem)


def test_cuda_request_names_the_install_problem(bundle_dir: Path) -> None:
    with pytest.raises(BadInput, match="device='cuda' but onnxruntime-gpu is not installed"):
        Encoder(bundle_dir, device="cuda")


def test_search_json_stays_parseable_when_onnxruntime_prints(
    fake_gpu_build: list[str], bundle_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_session = onnxruntime.InferenceSession

    def noisy_session(*args: object, **kwargs: object) -> object:
        print("*************** EP Error ***************")  # what ORT prints when a provider fails to load
        return real_session(*args, **kwargs)

    images = tmp_path / "imgs"
    images.mkdir()
    for name in ("red", "blue"):
        pattern_image(name, 0).save(images / f"{name}.png")
    runner = CliRunner()
    with pytest.warns(RuntimeWarning):
        assert runner.invoke(app, ["index", str(bundle_dir), str(images), "--out", str(tmp_path / "gal")]).exit_code == 0
    monkeypatch.setattr(onnxruntime, "InferenceSession", noisy_session)
    with pytest.warns(RuntimeWarning):
        res = runner.invoke(app, ["search", str(tmp_path / "gal"), str(images / "red.png"), "-k", "1", "--json"])
    assert res.exit_code == 0, res.output
    assert "EP Error" not in res.stdout and "EP Error" in res.stderr
    assert json.loads(res.stdout)[0]["results"][0]["id"].endswith("red.png")


class _Context:
    """A TensorRT execution context that accepts batch sizes ``lo..hi`` and echoes each row's mean."""

    def __init__(self, lo: int, hi: int) -> None:
        self.lo, self.hi, self.shapes = lo, hi, []

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        ok = self.lo <= shape[0] <= self.hi
        if ok:
            self.shapes.append(shape)
        return ok

    def run(self, batch: np.ndarray) -> np.ndarray:
        backends.set_input_shape(self, "images", batch.shape)
        return batch.reshape(len(batch), -1).mean(axis=1, keepdims=True)


def test_batches_outside_the_profile_are_split_and_padded() -> None:
    ctx = _Context(lo=4, hi=8)
    batch = np.arange(19 * 3, dtype=np.float32).reshape(19, 3, 1, 1)
    out = backends.run_in_profile(ctx.run, batch, 4, 8)
    np.testing.assert_allclose(out[:, 0], batch.reshape(19, 3).mean(axis=1))  # every real row, in order, no padding rows
    assert [s[0] for s in ctx.shapes] == [8, 8, 4]  # the last 3 rows padded up to the profile's minimum
    assert backends.run_in_profile(ctx.run, batch[:1], 4, 8).shape == (1, 1)


def test_a_refused_input_shape_is_an_error_not_stale_rows() -> None:
    with pytest.raises(BadInput, match=r"TensorRT refused input shape \(9, 3, 1, 1\)"):
        _Context(lo=1, hi=8).run(np.zeros((9, 3, 1, 1), np.float32))


def test_missing_onnxruntime_names_both_extras(monkeypatch: pytest.MonkeyPatch, bundle_dir: Path) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(MissingDependency, match=r'onnxruntime is not installed \(pip install "proxyembed\[cpu\]", or "proxyembed\[gpu\]"'):
        Encoder(bundle_dir, device="cpu")


class _FakeCudart:
    """The few cuda-python runtime calls the native backend and gpu_info make, on a pretend device."""

    def __init__(self, props: object | None = None) -> None:
        self.live: dict[int, int] = {}  # pointer -> bytes
        self.props, self._next = props, 0x1000

    def cudaMalloc(self, nbytes: int) -> tuple[int, int]:
        self._next += 0x1000
        self.live[self._next] = nbytes
        return 0, self._next

    def cudaFree(self, ptr: int) -> tuple[int]:
        del self.live[ptr]
        return (0,)

    def cudaGetDeviceCount(self) -> tuple[int, int]:
        return (0, 1) if self.props is not None else (100, 0)  # 100: cudaErrorNoDevice

    def cudaGetDeviceProperties(self, device: int) -> tuple[int, object]:
        return 0, self.props


def test_device_buffers_grow_to_the_largest_request_and_free_everything() -> None:
    cudart = _FakeCudart()
    buffers = backends.cuda.DeviceBuffers(cudart)
    first = buffers.get("images", 1024)
    assert buffers.get("images", 512) == first and cudart.live == {first: 1024}  # smaller: reused
    grown = buffers.get("images", 4096)
    out = buffers.get("embeddings", 64)
    assert grown != first and cudart.live == {grown: 4096, out: 64}  # the old allocation was freed on growth
    buffers.free()
    assert cudart.live == {}


def test_a_failed_cuda_call_raises_naming_the_call() -> None:
    assert backends.cuda.cuda_call((0, 42), "cudaMalloc") == 42
    with pytest.raises(RuntimeError, match="CUDA call cudaMalloc failed with error 2"):
        backends.cuda.cuda_call((2, 0), "cudaMalloc")


def test_gpu_info_reads_device_zero_through_the_bindings(monkeypatch: pytest.MonkeyPatch) -> None:
    props = type("Props", (), {"name": b"NVIDIA H100 80GB HBM3\x00\x00", "major": 9, "minor": 0})()
    monkeypatch.setattr(backends.cuda, "cudart", lambda: _FakeCudart(props))
    assert backends.gpu_info() == {"gpu_name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}
    monkeypatch.setattr(backends.cuda, "cudart", lambda: _FakeCudart(None))
    assert backends.gpu_info() is None  # the driver reports no device
