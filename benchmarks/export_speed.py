"""Export speed benchmark: PyTorch eager vs ONNX Runtime fp32 vs int8 on this machine, with Recall@1 beside it.

Usage: ``python benchmarks/export_speed.py [--run RUN_DIR] [--backbone resnet18] [--size 224] [--threads 2]``

Speed: a random-init ``backbone`` embedder (128-d) at ``size`` px (weights do not change the speed),
exported with the same code as ``proxyembed export``: latency at batch 1 (median, p95) and throughput at
batch 32, all runtimes with ``--threads`` intra-op threads, measured in one run. fp16 and TensorRT are
GPU paths, timed only where they really run: ONNX Runtime's CUDA and TensorRT providers (each session's
``get_providers()`` checked, so a GPU row is never timed on the CPU) and native TensorRT engines.
Accuracy: ``proxyembed export --fp16 --int8`` on ``--run`` (a trained run dir) or, without one, on a
random-init checkpoint at the data's own resolution; Recall@1 of every precision next to PyTorch's.
Results go to ``benchmarks/results/export_speed.{json,md}``. Targets (issue 3): ORT fp32 >= 2x PyTorch
at batch 1; int8 >= 2x ORT fp32 at batch 32 with Recall@1 within 1 point.
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from proxyembed.data import resolve_data
from proxyembed.export.int8 import Int8Options, calibration_batch, quantize_int8
from proxyembed.export.onnx_export import export_onnx
from proxyembed.export.options import ExportOptions
from proxyembed.export.pipeline import export_run
from proxyembed.export.validate import served
from proxyembed.models import ModelConfig, build_embedder
from proxyembed.runtime.preprocess import PreprocessSpec
from proxyembed.runtime.system import cpu_name
from proxyembed.training.checkpoint import save_checkpoint
from proxyembed.training.inference import torch_encode_batch
from proxyembed.training.run_dir import BEST

RESULTS = Path(__file__).parent / "results"


def timed(fn: Callable[[np.ndarray], np.ndarray], x: np.ndarray, iters: int, warmup: int) -> list[float]:
    """Wall times in milliseconds of ``iters`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn(x)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn(x)
        times.append((time.perf_counter() - t0) * 1000)
    return times


def gpu_runners(work: Path, size: int) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """ONNX Runtime CUDA / TensorRT providers and native TensorRT engines, each only where it really runs.

    A session asked for a GPU provider quietly runs on the CPU when that provider fails to load, so every
    row checks ``get_providers()`` first: a "CUDA" row timed on the CPU would be a wrong number.
    """
    from proxyembed.export import tensorrt
    from proxyembed.export.fp16 import convert_fp16
    from proxyembed.runtime import backends
    from proxyembed.runtime.errors import BadInput

    providers = {p[0] if isinstance(p, tuple) else p: p for p in backends.ort_gpu_providers("images", size)}
    runners: dict[str, Callable[[np.ndarray], np.ndarray]] = {}
    if not providers and tensorrt.unavailable_reason():
        print("  GPU rows: skipped, no ONNX Runtime GPU provider and " + str(tensorrt.unavailable_reason()), flush=True)
        return runners
    convert_fp16(work / "fp32.onnx", work / "fp16.onnx")
    files = {"fp32": "fp32.onnx", "fp16": "fp16.onnx", "int8": "int8_gpu.onnx"}
    for name, label in (("CUDAExecutionProvider", "ORT CUDA"), ("TensorrtExecutionProvider", "ORT TensorRT")):
        for precision, file in files.items() if name in providers else ():
            backend = backends.open_backend(work / file, "onnx", input_name="images", output_name="embeddings",
                                            providers=[providers[name]])
            if backend.provider != name:
                print(f"  {label} {precision}: skipped, ONNX Runtime fell back to {backend.provider}", flush=True)
                continue
            runners[f"{label} {precision}"] = functools.partial(backends.embed_batch, backend)
    why = tensorrt.unavailable_reason()
    for precision, file in files.items() if why is None else ():
        engine = work / f"engine_{precision}.plan"
        try:
            tensorrt.build_engine(work / file, engine, precision, tensorrt.BatchProfile(1, 32, 32), size)
            runners[f"TensorRT {precision}"] = served(engine, "tensorrt")
        except (BadInput, RuntimeError) as exc:
            print(f"  TensorRT {precision}: skipped, {exc}", flush=True)
    if why:
        print(f"  native TensorRT rows: skipped, {why}", flush=True)
    return runners


def speed(args: argparse.Namespace, work: Path) -> list[dict]:
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    model = build_embedder(ModelConfig(args.backbone, 128, "avg+max")).eval()
    spec = PreprocessSpec(resize=round(args.size * 256 / 224), crop=args.size)
    export_onnx(model, work / "fp32.onnx", crop=args.size, backbone=args.backbone)
    calib = calibration_batch(resolve_data(args.data).train, spec, args.calibration_size)
    for target in ("cpu", "gpu"):
        quantize_int8(work / "fp32.onnx", work / f"int8_{target}.onnx", calib, target, Int8Options())
    runners = {
        "PyTorch eager fp32": torch_encode_batch(model),
        "ORT fp32": served(work / "fp32.onnx", threads=args.threads),
        "ORT int8 (cpu: U8S8 QDQ)": served(work / "int8_cpu.onnx", threads=args.threads),
        "ORT int8 (gpu: S8S8 QDQ, run on CPU)": served(work / "int8_gpu.onnx", threads=args.threads),
    }
    runners.update(gpu_runners(work, args.size))
    rng = np.random.default_rng(0)
    x1 = rng.standard_normal((1, 3, args.size, args.size)).astype(np.float32)
    x32 = rng.standard_normal((32, 3, args.size, args.size)).astype(np.float32)
    reference = runners["PyTorch eager fp32"](x32)
    rows = []
    for name, run in runners.items():
        lat = timed(run, x1, args.iters, warmup=5)
        thr = timed(run, x32, args.batch_iters, warmup=1)
        out = run(x32)
        cos = (out * reference).sum(1) / np.linalg.norm(out, axis=1)
        rows.append({
            "runtime": name,
            "b1_median_ms": float(np.median(lat)),
            "b1_p95_ms": float(np.percentile(lat, 95)),
            "b32_median_ms": float(np.median(thr)),
            "b32_images_per_s": 32_000.0 / float(np.median(thr)),
            "cosine_min_vs_pytorch": float(cos.min()),
        })
        print(f"  {name}: b1 {rows[-1]['b1_median_ms']:.1f} ms, b32 {rows[-1]['b32_images_per_s']:.0f} img/s", flush=True)
    return rows


def accuracy(args: argparse.Namespace, work: Path) -> dict:
    run = args.run
    if run is None:  # a quick stand-in: random init at the data's own resolution
        data = resolve_data(args.data)
        torch.manual_seed(0)
        config = ModelConfig(args.backbone, 128, "avg+max")
        model = build_embedder(config).eval()
        run = work / "run"
        save_checkpoint(run / BEST, {
            "model_config": config.to_dict(), "model": model.state_dict(), "preprocess": data.preprocess.to_dict(),
            "config": {"data": args.data}, "epoch": 0, "metrics": {},
        })
    opts = ExportOptions(run=run, out=work / "bundle", fp16=True, int8=True, calibration_size=args.calibration_size,
                         max_drop={"fp32": 100.0, "fp16": 100.0, "int8": 100.0})  # report, never refuse, here
    result = export_run(opts)
    return {
        "source": str(args.run) if args.run else f"random-init {args.backbone} (no --run given)",
        "data": result.report.data,
        "reference_recall@1": result.report.reference["recall@1"],
        "artifacts": {s.file: {"precision": s.precision, "target": s.target, "recall@1": s.metrics["recall@1"],
                               "drop_points": s.drop["recall@1"], "cosine_min": s.cosine_min} for s in result.report.scores},
    }


def markdown(meta: dict, rows: list[dict], acc: dict) -> str:
    base = {r["runtime"]: r for r in rows}
    fp32 = base["ORT fp32"]
    eager = base["PyTorch eager fp32"]
    lines = [
        "# Export speed",
        "",
        f"Machine: {meta['cpu']}, {meta['threads']} intra-op threads for every runtime. Versions: "
        + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()) + ".",
        f"Speed model: random-init {meta['backbone']} embedder (128-d) at {meta['size']} px. "
        f"Batch 1: {meta['iters']} runs; batch 32: {meta['batch_iters']} runs.",
        "",
        "| runtime | b1 median ms | b1 p95 ms | b32 img/s | vs ORT fp32 (b32) | vs eager (b1) | cos min vs PyTorch |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['runtime']} | {r['b1_median_ms']:.2f} | {r['b1_p95_ms']:.2f} | {r['b32_images_per_s']:.1f} | "
            f"{r['b32_images_per_s'] / fp32['b32_images_per_s']:.2f}x | {eager['b1_median_ms'] / r['b1_median_ms']:.2f}x | "
            f"{r['cosine_min_vs_pytorch']:.5f} |"
        )
    lines += [
        "",
        f"Recall@1 ({acc['source']}; {acc['data'].get('name')}, {acc['data'].get('images')} images of "
        f"{acc['data'].get('classes')} held-out classes): PyTorch fp32 {100 * acc['reference_recall@1']:.2f}",
        "",
        "| artifact | precision | target | Recall@1 | drop (points) | cos min |",
        "|---|---|---|---:|---:|---:|",
    ]
    for file, a in acc["artifacts"].items():
        lines.append(f"| {file} | {a['precision']} | {a['target']} | {100 * a['recall@1']:.2f} | {a['drop_points']:+.2f} | {a['cosine_min']:.5f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, default=None, help="trained run dir for the Recall@1 column")
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--batch-iters", type=int, default=5)
    p.add_argument("--data", default="synthetic")
    p.add_argument("--calibration-size", type=int, default=128)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()
    meta = {
        "cpu": cpu_name(),
        "threads": args.threads,
        "backbone": args.backbone,
        "size": args.size,
        "iters": args.iters,
        "batch_iters": args.batch_iters,
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "onnxruntime": ort.__version__,
                     "onnx": onnx.__version__},
    }
    print(f"{meta['cpu']} | {args.threads} threads | " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()), flush=True)
    with tempfile.TemporaryDirectory(prefix="proxyembed-bench-") as tmp:
        work = Path(tmp)
        rows = speed(args, work)
        acc = accuracy(args, work)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "export_speed.json").write_text(json.dumps({"meta": meta, "speed": rows, "accuracy": acc}, indent=2) + "\n")
    md = markdown(meta, rows, acc)
    (args.out / "export_speed.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
