"""Tests not marked ``gpu`` run as on a CPU-only machine, whatever this one has.

Their assertions (the artifact ``Encoder(device="auto")`` picks, the files ``export --tensorrt`` writes,
the device ``--device auto`` trains on) describe the CPU path; on a machine with a GPU, onnxruntime-gpu or
tensorrt they would take another. The pin is session-wide because module-scoped fixtures build bundles
before any function-scoped fixture runs; a ``gpu``-marked test lifts it for its own duration (and is
skipped where torch sees no CUDA GPU). It patches
this process only: tests that start subprocesses pass ``--device cpu`` (or hide the GPU) themselves, and
no environment variable is set, because CUDA reads ``CUDA_VISIBLE_DEVICES`` once per process.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


def _pin_to_cpu(mp: pytest.MonkeyPatch) -> None:
    import onnxruntime
    import torch

    from proxyembed.runtime import backends

    mp.setattr(torch.cuda, "is_available", lambda: False)
    mp.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    mp.setattr(backends.cuda, "cudart", lambda: None)  # no cuda-python: gpu_info() is None
    mp.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` raises ImportError


@pytest.fixture(scope="session", autouse=True)
def cpu_only() -> Iterator[pytest.MonkeyPatch]:
    mp = pytest.MonkeyPatch()
    _pin_to_cpu(mp)
    yield mp
    mp.undo()


@pytest.fixture(autouse=True)
def _gpu_tests_see_the_machine(request: pytest.FixtureRequest, cpu_only: pytest.MonkeyPatch) -> Iterator[None]:
    if request.node.get_closest_marker("gpu") is None:
        yield
        return
    cpu_only.undo()
    try:
        import torch

        if not torch.cuda.is_available():
            pytest.skip("no CUDA GPU")
        yield
    finally:
        _pin_to_cpu(cpu_only)


@pytest.fixture(scope="session", autouse=True)
def _image_cache_in_a_temp_folder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Training's disk image caches (and anything else under the user's cache dir) go to a temporary folder, never
    ~/.cache; set in the environment so torchrun workers and other subprocesses inherit it."""
    with pytest.MonkeyPatch.context() as mp:  # restored after the session
        mp.setenv("PROXYEMBED_CACHE", str(tmp_path_factory.mktemp("user-cache")))
        yield


@pytest.fixture(autouse=True)
def _process_state_is_restored() -> Iterator[None]:
    """What a test (or the code it calls in-process) changes for the whole process is put back after it: the
    environment, ``sys.path``, the root logger's level, and torch's thread count and default dtype, so no test
    passes or fails because of the one before it. The state is taken after the module and session fixtures set theirs."""
    import logging
    import os

    env, path = dict(os.environ), list(sys.path)
    root = logging.getLogger()
    level = root.level
    torch = sys.modules.get("torch")
    threads, dtype = (torch.get_num_threads(), torch.get_default_dtype()) if torch is not None else (None, None)
    yield
    if dict(os.environ) != env:
        os.environ.clear()
        os.environ.update(env)
    if sys.path != path:
        sys.path[:] = path
    root.setLevel(level)
    if torch is not None and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    if torch is not None and torch.get_default_dtype() != dtype:
        torch.set_default_dtype(dtype)


# The serve tests' bundle and gallery (tests/test_serve*.py); a module that needs others defines its own, which wins.
@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny fp32 bundle (no int8) for one test module."""
    from helpers.bundles import make_tiny_bundle

    return make_tiny_bundle(tmp_path_factory.mktemp("serve") / "bundle", with_int8=False)


@pytest.fixture
def gallery(bundle: Path, tmp_path: Path) -> Path:
    """A gallery of a few class images indexed with ``bundle``, in this test's temporary folder."""
    from helpers.servers import make_gallery

    return make_gallery(bundle, tmp_path / "images", tmp_path / "gallery")


@pytest.fixture
def fake_training(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Replace the trainer: record the TrainConfig each ``proxyembed train`` resolved and return fixed metrics."""
    from proxyembed.training import trainer

    seen: list[Any] = []

    def fake_train(cfg: Any, out: Path, **_: Any) -> trainer.TrainResult:
        seen.append(cfg)
        return trainer.TrainResult(Path(out), {"recall@1": 0.1}, {"recall@1": 0.5}, {"recall@1": 0.6}, 2)

    monkeypatch.setattr(trainer, "train", fake_train)
    return seen
