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


def amp_dtype(choice: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``--amp`` (auto, bf16, fp16 or none) on ``device``; ``None`` (fp32) off CUDA."""
    if device.type != "cuda" or choice == "none":
        return None
    if choice == "auto":
        # By default is_bf16_supported() also counts bf16 emulated in fp32 (V100, T4): slower than fp16 there.
        return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[choice]
