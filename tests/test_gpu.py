"""What only a CUDA GPU can show (``pytest -m gpu``, run by ``benchmarks/gpu_check.sh``); skipped elsewhere."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch

from helpers.bundles import make_tiny_bundle
from proxyembed.data import resolve_data
from proxyembed.runtime import Encoder
from proxyembed.training.checkpoint import load_checkpoint
from proxyembed.training.config import resolve_config
from proxyembed.training.model_eval import evaluate_model
from proxyembed.training.trainer import train

pytestmark = pytest.mark.gpu

TINY = "synthetic:train_classes=8,eval_classes=8,per_class=8,size=40"


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_training_reports_fp32_metrics(tmp_path: Path, amp: str) -> None:
    """metrics.jsonl is what an fp32 evaluation of best.pt on the CPU gives (evaluation is not under autocast)."""
    if amp == "bf16" and not torch.cuda.is_bf16_supported(including_emulation=False):
        pytest.skip("this GPU has no native bf16")
    cfg = resolve_config(dict(data=TINY, epochs=1, batch_size=16, image_size=32, resize=36, embedding_dim=16, device="cuda", amp=amp))
    train(cfg, tmp_path / "run")
    logged = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    ckpt = load_checkpoint(tmp_path / "run")
    cpu = evaluate_model(ckpt.build_model(), resolve_data(TINY), ckpt.preprocess)
    assert abs(cpu["recall@1"] - logged["recall@1"]) <= 1 / 64 + 1e-9  # one query of 64 may flip on a near tie (TF32 convs)


def test_ort_cuda_provider_runs_and_agrees_with_the_cpu(tmp_path: Path) -> None:
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        pytest.skip("onnxruntime has no CUDA provider (onnxruntime-gpu not installed)")
    bundle = make_tiny_bundle(tmp_path / "b", with_int8=False)
    gpu, cpu = Encoder(bundle, device="cuda"), Encoder(bundle, device="cpu")
    assert gpu.provider in ("TensorrtExecutionProvider", "CUDAExecutionProvider")
    x = np.random.default_rng(0).standard_normal((40, 3, 32, 32)).astype(np.float32)
    assert (gpu.encode_batch(x) * cpu.encode_batch(x)).sum(1).min() > 0.999
