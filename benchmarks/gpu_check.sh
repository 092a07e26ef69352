#!/usr/bin/env bash
# One-shot check of every GPU path, for a lent GPU machine (docs/gpu.md says how to run it and read it).
#
# Installs proxyembed offline, then runs each step with its own timeout and prints one summary line per
# step: name, exit code, seconds, and ok / FAILED / TIMEOUT / "skipped: why". Full logs go to $OUT
# (default ./gpu_check_out). On a machine without a CUDA GPU the GPU steps say "skipped: no CUDA GPU" and
# the rest (install, a CPU training run, export and validation) still runs, which is how CI keeps this
# script from rotting (GPU_CHECK_TINY=1 shrinks every step).
#
# Environment: OUT (log folder), GPU_CHECK_TINY=1 (tiny data, 1 epoch), GPU_CHECK_WHEELS (folder of extra
# wheels to install offline first, e.g. pytest / onnxconverter-common; default benchmarks/wheels),
# PYTHON (interpreter, default python3).
set -uo pipefail
cd "$(dirname "$0")/.."

OUT="${OUT:-$PWD/gpu_check_out}"
PYTHON="${PYTHON:-python3}"
WHEELS="${GPU_CHECK_WHEELS:-benchmarks/wheels}"
mkdir -p "$OUT"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/proxyembed-gpu-check.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"

if [ "${GPU_CHECK_TINY:-0}" = 1 ]; then
  DATA="synthetic:train_classes=4,eval_classes=4,per_class=6,size=40"
  TRAIN_ARGS=(--epochs 1 --batch-size 8 --image-size 32 --embedding-dim 16)
  SPEED_ARGS=(--data "$DATA" --size 32 --batch 8 --workers 0 --threads 1)
  CALIBRATION=8
else
  DATA="synthetic:train_classes=20,eval_classes=20,per_class=24"
  TRAIN_ARGS=(--epochs 2 --batch-size 32)
  SPEED_ARGS=(--data "synthetic:train_classes=32,eval_classes=16,per_class=32" --size 112 --batch 64 --workers 0,4 --threads 4)
  CALIBRATION=64
fi

summary() {  # name, exit code, seconds, status
  printf '%-22s exit=%-4s %6ss  %s\n' "$1" "$2" "$3" "$4" | tee -a "$SUMMARY"
}

skip() {  # name, reason
  summary "$1" "-" "0.0" "skipped: $2"
}

step() {  # name, timeout seconds, command...
  local name="$1" limit="$2"
  shift 2
  local t0 ms code status
  t0=$(date +%s%N)
  timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
  code=$?
  ms=$((($(date +%s%N) - t0) / 1000000))
  case $code in
    0) status=ok ;;
    124|137) status="TIMEOUT after ${limit}s (see $name.log)" ;;
    *) status="FAILED (see $name.log: $(grep -v '^\s*$' "$OUT/$name.log" | tail -n 1 | cut -c1-120))" ;;
  esac
  summary "$name" "$code" "$((ms / 1000)).$((ms % 1000 / 100))" "$status"
  return $code
}

has() {  # python module importable?
  "$PYTHON" -c "import $1" > /dev/null 2>&1
}

PE=("$PYTHON" -P -m proxyembed)

echo "proxyembed GPU check: logs in $OUT" | tee -a "$SUMMARY"

# -- install (offline) ---------------------------------------------------------------------------------
if compgen -G "$WHEELS/*.whl" > /dev/null; then
  step wheels 120 "$PYTHON" -m pip install --no-deps --no-index "$WHEELS"/*.whl
else
  skip wheels "no wheels in $WHEELS"
fi
# pip install -e needs a build backend in the environment (setuptools >= 70.1, or setuptools + wheel); without
# one, and with no network, the shim below imports proxyembed from this checkout instead: a folder whose
# proxyembed/ links the package's files plus runtime/ and export/ (the pyproject package-dir mapping).
# Every command runs with python -P so the checkout's own ./proxyembed never shadows it.
INSTALL='"$0" -m pip install --no-deps --no-build-isolation -e . || {
  echo "pip install -e failed: importing proxyembed through a PYTHONPATH shim instead"
  mkdir -p "$1/proxyembed" && ln -s "$PWD"/proxyembed/* "$1/proxyembed/" && ln -s "$PWD/runtime" "$PWD/export" "$1/proxyembed/" || exit 1
}
PYTHONPATH="$1${PYTHONPATH:+:$PYTHONPATH}" "$0" -P -c "import proxyembed.runtime, proxyembed.export.pipeline, proxyembed.training.trainer"'
step install 180 bash -c "$INSTALL" "$PYTHON" "$WORK/shim"
if [ -d "$WORK/shim/proxyembed" ]; then
  export PYTHONPATH="$WORK/shim${PYTHONPATH:+:$PYTHONPATH}"
  echo "  note: pip install -e failed (see install.log); proxyembed is imported through a PYTHONPATH shim" | tee -a "$SUMMARY"
fi
step environment 60 "$PYTHON" - <<'EOF'
import importlib, platform, shutil, subprocess
print("python", platform.python_version())
for mod in ("torch", "timm", "onnx", "onnxscript", "onnxruntime", "tensorrt", "hnswlib", "onnxconverter_common", "pytest"):
    try:
        print(mod, getattr(importlib.import_module(mod), "__version__", "?"))
    except ImportError:
        print(mod, "not installed")
import onnxruntime, torch
print("onnxruntime providers", onnxruntime.get_available_providers())
print("cuda", torch.cuda.is_available(), torch.version.cuda, torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
if torch.cuda.is_available():
    print("bf16 native", torch.cuda.is_bf16_supported(including_emulation=False), "capability", torch.cuda.get_device_capability(0))
if shutil.which("nvidia-smi"):
    print(subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout)
EOF

GPU=0
"$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2> /dev/null && GPU=1

# -- training and evaluation on CUDA -------------------------------------------------------------------
RUN=""
if [ "$GPU" = 1 ]; then
  step train-cuda-bf16 240 "${PE[@]}" train --data "$DATA" "${TRAIN_ARGS[@]}" --device cuda --amp bf16 --out "$WORK/run-bf16" && RUN="$WORK/run-bf16"
  step train-cuda-fp16 240 "${PE[@]}" train --data "$DATA" "${TRAIN_ARGS[@]}" --device cuda --amp fp16 --out "$WORK/run-fp16"
  if [ -n "$RUN" ]; then
    step eval-cuda 120 "${PE[@]}" eval "$RUN" --device cuda --json
  else
    skip eval-cuda "no run (train-cuda-bf16 failed)"
  fi
else
  skip train-cuda-bf16 "no CUDA GPU"
  skip train-cuda-fp16 "no CUDA GPU"
  skip eval-cuda "no CUDA GPU"
  step train-cpu 240 "${PE[@]}" train --data "$DATA" "${TRAIN_ARGS[@]}" --device cpu --out "$WORK/run-cpu" && RUN="$WORK/run-cpu"
fi

# -- export and validation (ONNX Runtime CPU) ----------------------------------------------------------
EXPORT_ARGS=(--int8 --calibration-size "$CALIBRATION" --max-recall-drop int8=10)
FP16_NOTE=""
if has onnxconverter_common; then EXPORT_ARGS+=(--fp16); else FP16_NOTE=" (fp16 skipped: onnxconverter-common not installed)"; fi
if [ -n "$RUN" ]; then
  step export 300 "${PE[@]}" export "$RUN" --out "$WORK/bundle" "${EXPORT_ARGS[@]}" && [ -n "$FP16_NOTE" ] && echo "  note:$FP16_NOTE" | tee -a "$SUMMARY"
else
  skip export "no training run to export"
fi

# -- TensorRT and ONNX Runtime GPU providers -----------------------------------------------------------
if ! has tensorrt; then
  skip tensorrt-export "not installed (pip install \"proxyembed[gpu]\", docs/gpu.md)"
elif [ "$GPU" = 0 ]; then
  skip tensorrt-export "no CUDA GPU"
elif [ -n "$RUN" ]; then
  step tensorrt-export 420 "${PE[@]}" export "$RUN" --out "$WORK/bundle-trt" "${EXPORT_ARGS[@]}" --tensorrt
else
  skip tensorrt-export "no training run to export"
fi
if ! "$PYTHON" -c "import onnxruntime as o, sys; sys.exit(0 if 'CUDAExecutionProvider' in o.get_available_providers() else 1)" 2> /dev/null; then
  skip ort-cuda-encode "onnxruntime has no CUDA provider (onnxruntime-gpu not installed)"
elif [ -d "$WORK/bundle" ]; then
  step ort-cuda-encode 120 "$PYTHON" -P -c "
import numpy as np, sys
from proxyembed.runtime import Encoder
gpu, cpu = Encoder(sys.argv[1], device='cuda'), Encoder(sys.argv[1], device='cpu', precision='fp32')
x = np.random.default_rng(0).standard_normal((8, 3, gpu.bundle.manifest.preprocess.crop, gpu.bundle.manifest.preprocess.crop)).astype(np.float32)
cos = (gpu.encode_batch(x) * cpu.encode_batch(x)).sum(1)
print(gpu.describe(), 'cosine to CPU fp32 min', cos.min())
sys.exit(0 if cos.min() > 0.99 else 1)
" "$WORK/bundle"
else
  skip ort-cuda-encode "no bundle (export failed)"
fi

# -- tests and benchmark -------------------------------------------------------------------------------
if ! has pytest; then
  skip pytest-gpu "pytest not installed (put its wheels in $WHEELS)"
elif [ "$GPU" = 0 ]; then
  skip pytest-gpu "no CUDA GPU"
else
  step pytest-gpu 300 "$PYTHON" -P -m pytest -m gpu -q -p no:cacheprovider tests
fi
if [ "$GPU" = 1 ]; then
  step train-speed-cuda 300 "$PYTHON" -P benchmarks/train_speed.py "${SPEED_ARGS[@]}" --device cuda --out "$OUT/train_speed"
else
  skip train-speed-cuda "no CUDA GPU"
fi
failed=$(grep -c 'FAILED\|TIMEOUT' "$SUMMARY")
echo "done: $(grep -c ' ok$' "$SUMMARY") ok, $failed failed, $(grep -c 'skipped:' "$SUMMARY") skipped" | tee -a "$SUMMARY"
[ "$failed" = 0 ]
