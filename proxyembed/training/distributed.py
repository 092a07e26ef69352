"""Data-parallel training across processes and machines, launched by ``torchrun``.

``torchrun --nproc-per-node N -m proxyembed train ...`` (multi-node: add torchrun's ``--nnodes`` and
``--rdzv-*`` options) starts N copies of the trainer; each reads its place from the environment torchrun
sets (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``). Without those variables, or with ``WORLD_SIZE=1``, every
function here is a no-op and training is exactly the single-process run.

How the work is split, and why:

- **Model gradients**: the embedder is wrapped in :class:`DistributedDataParallel`, which averages them
  while the backward pass runs.
- **Loss gradients** (proxies, NIR's flow) are averaged by one coalesced all-reduce after the backward
  pass (:func:`average_gradients`) rather than by a second DDP wrapper: DDP refuses a module without
  parameters (triplet), and every proxy receives a dense gradient on every rank anyway (Proxy-Anchor's
  negative term and Proxy-NCA's softmax run over all proxies), so DDP's buckets would hold the same one
  tensor. The cost is that this reduction does not overlap the model's backward pass.
- **Evaluation** is sharded: each rank embeds a contiguous slice of the held-out images, the slices are
  all-gathered, and every rank computes the metrics from the same array (:func:`evaluate_sharded`). The
  embedding, the expensive part, is N times faster; the metrics cost every rank the same time that rank 0
  alone would take (torchrun sets one CPU thread per process by default), and no rank waits on another's long
  computation, so the process-group timeout only has to cover rank 0's checkpoint writes.
- **Output**: only rank 0 writes the run dir and reports progress; all ranks keep the same history.

A non-finite loss on any rank stops every rank with ``TrainingFailed``: the trainer all-reduces the loss
before checking it. Any other error on one rank ends that process, torchrun stops the others, and a
collective that still waits gives up after :data:`TIMEOUT` instead of hanging.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from proxyembed.data.image_cache import ImageCache
from proxyembed.data.types import DataSplit, Sample
from proxyembed.runtime.errors import BadInput
from proxyembed.runtime.metrics import NmiMode
from proxyembed.runtime.preprocess import PreprocessSpec

from .model_eval import embed_samples, split_metrics

TIMEOUT = timedelta(minutes=5)
"""How long a collective waits for the other ranks before failing (instead of hanging forever)."""


@dataclass(frozen=True)
class World:
    """This process's place in a torchrun job; the default is a single process."""

    rank: int = 0
    local_rank: int = 0
    size: int = 1

    @property
    def distributed(self) -> bool:
        """Whether more than one process trains (and collectives are needed)."""
        return self.size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 writes the run dir and reports progress."""
        return self.rank == 0


def world_from_env(environ: Mapping[str, str] = os.environ) -> World:
    """The world torchrun describes in ``environ``; a single process when ``WORLD_SIZE`` is unset or 1."""
    try:
        size = int(environ.get("WORLD_SIZE", "1"))
        if size <= 1:
            return World()
        world = World(rank=int(environ["RANK"]), local_rank=int(environ.get("LOCAL_RANK", "0")), size=size)
    except (KeyError, ValueError) as exc:
        raise BadInput(
            f"WORLD_SIZE={environ.get('WORLD_SIZE')} but RANK/LOCAL_RANK are missing or not integers ({exc})",
            hint="launch multi-process training with torchrun, which sets them",
        ) from exc
    if not 0 <= world.rank < size or world.local_rank < 0:
        raise BadInput(f"RANK={world.rank} / LOCAL_RANK={world.local_rank} do not fit WORLD_SIZE={size}", hint="launch with torchrun")
    return world


def is_main_process() -> bool:
    """Whether this process should print results (rank 0, or not launched by torchrun)."""
    return world_from_env().is_main


@contextmanager
def process_group(world: World, device: torch.device) -> Iterator[None]:
    """Join the job's process group (NCCL on CUDA, gloo on CPU) for the block, and always leave it."""
    if not world.distributed:
        yield
        return
    cuda = device.type == "cuda"
    dist.init_process_group("nccl" if cuda else "gloo", timeout=TIMEOUT, device_id=device if cuda else None)
    try:
        yield
    finally:
        dist.destroy_process_group()


def barrier(world: World) -> None:
    """Wait until every rank gets here."""
    if world.distributed:
        dist.barrier()


def all_reduce_mean(value: torch.Tensor, world: World) -> torch.Tensor:
    """The mean of ``value`` over ranks (``value`` itself in a single process).

    A non-finite value on any rank makes the mean non-finite on all of them, so checking the result
    stops every rank together.
    """
    if not world.distributed:
        return value
    value = value.detach().clone()
    dist.all_reduce(value)
    return value / world.size


def average_gradients(params: Sequence[nn.Parameter], world: World) -> None:
    """Average the gradients of ``params`` over ranks in one all-reduce (a missing gradient counts as zero)."""
    if not world.distributed or not params:
        return
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
    dist.all_reduce(flat)
    flat /= world.size
    for p, grad in zip(params, flat.split([p.numel() for p in params]), strict=True):
        p.grad = grad.view_as(p)


def broadcast_from_main(tensors: Iterable[torch.Tensor], world: World) -> None:
    """Overwrite ``tensors`` on every rank with rank 0's values.

    Used for the loss's parameters at the start (so every rank starts from the same proxies whatever
    the local RNG did) and for the model's buffers before evaluation and saving: each rank updates its
    BatchNorm statistics from its own batches, and the numbers reported must be those of the weights
    rank 0 saves.
    """
    if not world.distributed:
        return
    with torch.no_grad():
        for t in tensors:
            dist.broadcast(t, src=0)


def sync_batchnorm(model: nn.Module) -> nn.Module:
    """``model`` with its BatchNorm layers (timm's fused norm+act ones included) computing statistics over all ranks."""
    from timm.layers import convert_sync_batchnorm

    return convert_sync_batchnorm(model)


def unused_parameters(model: nn.Module, example: torch.Tensor) -> list[str]:
    """Names of trainable parameters that the forward pass on ``example`` never reaches.

    timm backbones built with ``num_classes=0`` keep parts of their classifier head that the embedding path
    skips (ConvNeXt's ``head.norm``: :class:`~proxyembed.models.Embedder` pools ``forward_features`` itself).
    DistributedDataParallel waits for a gradient of every parameter it holds and fails with "Expected to
    have finished reduction" when one never comes; the trainer freezes these instead of paying for
    ``find_unused_parameters`` on every step. The probe runs in eval mode so BatchNorm statistics stay put.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    was_training = model.training
    model.eval()
    try:
        out = model(example)
        grads = torch.autograd.grad(out.float().sum(), [p for _, p in named], allow_unused=True)
    finally:
        model.train(was_training)
    return [n for (n, _), g in zip(named, grads, strict=True) if g is None]


def wrap_model(model: nn.Module, world: World, device: torch.device, *, find_unused: bool) -> nn.Module:
    """``model`` in DistributedDataParallel for a multi-process run, else ``model`` itself.

    ``find_unused`` must be set when parameters may get no gradient in some steps (the frozen backbone
    of ``--warmup-epochs``); it costs one graph traversal per step.
    """
    if not world.distributed:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=find_unused)


def shard_bounds(n: int, world: World) -> tuple[int, int]:
    """The contiguous slice ``[lo, hi)`` of ``n`` items this rank handles; later ranks may get fewer or none."""
    per = -(-n // world.size)
    lo = min(n, world.rank * per)
    return lo, min(n, lo + per)


def gather_rows(local: np.ndarray, n: int, dim: int, world: World, device: torch.device) -> np.ndarray:
    """All ranks' :func:`shard_bounds` slices of an (n, dim) array, concatenated in rank order, on every rank."""
    per = -(-n // world.size)
    padded = torch.zeros(per, dim, device=device)  # all_gather needs equal shapes; padding sits at the end
    if len(local):
        padded[: len(local)] = torch.from_numpy(local).to(device)
    parts = [torch.empty_like(padded) for _ in range(world.size)]
    dist.all_gather(parts, padded)
    return torch.cat(parts)[:n].cpu().numpy()


def embed_sharded(
    model: nn.Module, samples: Sequence[Sample], spec: PreprocessSpec, world: World, *, dim: int, device: torch.device, **kw: object
) -> np.ndarray:
    """Embeddings of all ``samples`` on every rank, each rank embedding only its slice."""
    lo, hi = shard_bounds(len(samples), world)
    local = embed_samples(model, samples[lo:hi], spec, device=device, **kw)
    return gather_rows(local, len(samples), dim, world, device)


def evaluate_sharded(
    model: nn.Module,
    data: DataSplit,
    spec: PreprocessSpec,
    world: World,
    *,
    dim: int,
    device: torch.device,
    autocast_dtype: torch.dtype | None = None,
    on_batch: Callable[[int], None] | None = None,
    nmi: NmiMode = "auto",
    cache: ImageCache | None = None,
) -> dict[str, float]:
    """:func:`~proxyembed.training.model_eval.evaluate_model`'s metrics with the embedding split over ranks.

    ``model`` must be the unwrapped network: its forward runs a different number of batches on each
    rank, which DistributedDataParallel's per-forward collectives would not survive.
    """
    kw = dict(dim=dim, device=device, autocast_dtype=autocast_dtype, on_batch=on_batch, cache=cache)
    return split_metrics(data, lambda samples: embed_sharded(model, samples, spec, world, **kw), nmi=nmi)
