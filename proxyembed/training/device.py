"""Where a process trains or evaluates, and in which precision: ``--device`` and ``--amp`` resolved once.

One selector for single-process runs, ``proxyembed eval`` and torchrun jobs alike: a multi-process CUDA
run puts each process on the GPU its ``LOCAL_RANK`` names.
"""

from __future__ import annotations

import torch

from proxyembed.runtime.errors import BadInput

from .distributed import World


def select_device(choice: str, world: World | None = None) -> torch.device:
    """The device for ``--device`` (auto, cpu or cuda); ``cuda:LOCAL_RANK`` (made current) in a multi-process CUDA run.

    ``cuda`` without a CUDA device is a :class:`BadInput`; ``auto`` falls back to the CPU.
    """
    if choice == "cuda" and not torch.cuda.is_available():
        raise BadInput("--device cuda: no CUDA device is available", hint="use --device cpu or auto")
    device = torch.device("cuda" if choice in ("auto", "cuda") and torch.cuda.is_available() else "cpu")
    if world is None or not world.distributed or device.type != "cuda":
        return device
    if world.local_rank >= torch.cuda.device_count():
        raise BadInput(
            f"LOCAL_RANK {world.local_rank} but this machine has {torch.cuda.device_count()} CUDA device(s)",
            hint="use --nproc-per-node at most the number of GPUs per machine",
        )
    torch.cuda.set_device(world.local_rank)
    return torch.device("cuda", world.local_rank)


def native_cpu_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (Intel AMX), where bf16 autocast trains about a quarter
    faster than fp32 (docs/benchmarks.md); elsewhere CPU bf16 is emulated and slower than fp32."""
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(probe and probe())


def amp_dtype(choice: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``--amp`` (auto, bf16, fp16 or none) on ``device``; ``None`` means fp32.

    ``auto``: on CUDA bf16 where it is native, else fp16; on a CPU bf16 where :func:`native_cpu_bf16`, else fp32.
    ``fp16`` needs CUDA (CPUs have no fp16 training path worth taking).
    """
    if choice == "none":
        return None
    if device.type != "cuda":
        if choice == "fp16":
            raise BadInput("--amp fp16 needs a CUDA device", hint="use --amp bf16, auto or none on a CPU")
        return torch.bfloat16 if choice == "bf16" or (choice == "auto" and device.type == "cpu" and native_cpu_bf16()) else None
    if choice == "auto":
        # By default is_bf16_supported() also counts bf16 emulated in fp32 (V100, T4): slower than fp16 there.
        return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[choice]
