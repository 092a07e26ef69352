"""The training configuration: one typed dataclass, resolved once as CLI over recipe over defaults.

Recipes are shipped JSON files (``--recipe cub200``, see :mod:`.recipes`) or any JSON path; they hold the
published settings for the standard benchmarks. The resolved config is written to the run dir, and
``--resume`` reads it back, so a resumed run trains exactly as the original.

Under ``torchrun`` (see :mod:`proxyembed.training.distributed`) ``batch_size`` is the batch of each
process: the global batch, which sets the effective learning rate, is ``batch_size`` x the number of
processes. Scale ``lr`` yourself when changing the process count.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

from proxyembed.runtime.errors import BadInput

from .recipes import load_recipe

# Closed choices: the CLI takes its option types from here, so --help lists them and the parser rejects
# typos. LossName mirrors the loss registry without importing torch (a test keeps the two equal).
LossName = Literal["proxy_anchor", "proxy_nca", "proxy_nca++", "nir", "triplet"]
Pool = Literal["avg", "max", "avg+max"]
Sampler = Literal["random", "balanced"]
Schedule = Literal["cosine", "step", "none"]
Amp = Literal["auto", "bf16", "fp16", "none"]
Device = Literal["auto", "cpu", "cuda"]


@dataclass
class TrainConfig:
    """Every setting of a training run. Defaults train the built-in synthetic data on a CPU in minutes."""

    data: str = "synthetic"
    eval_data: str | None = None
    backbone: str = "resnet18"
    pretrained: str = "none"  # none | hub | path to a weights file
    pool: Pool = "avg+max"
    embedding_dim: int = 128
    loss: LossName = "proxy_anchor"
    loss_params: dict[str, Any] = field(default_factory=dict)
    epochs: int = 6
    batch_size: int = 64  # per process; the global batch is batch_size x the torchrun world size
    sampler: Sampler = "random"
    samples_per_class: int = 4
    lr: float = 1e-3
    head_lr_mult: float = 1.0
    proxy_lr_mult: float = 100.0
    # other loss parameters, e.g. NIR's flow: x0.5 of the default lr 1e-3 is the official flow lr 5e-4
    # (Roth 2022: 1e-5 x 50, which the NIR recipes use); higher overflows the exp objective
    aux_lr_mult: float = 0.5
    weight_decay: float = 1e-4
    schedule: Schedule = "cosine"
    step_size: int = 10
    step_gamma: float = 0.5
    warmup_epochs: int = 0
    freeze_bn: bool = False
    grad_clip: float = 10.0
    image_size: int | None = None  # training crop; default: the evaluation crop
    resize: int | None = None  # evaluation resize (shorter side); default from the data
    eval_every: int = 1
    select_metric: str = "recall@1"
    val_fraction: float = 0.0  # training classes held out to pick best.pt, instead of the test classes
    seed: int = 0
    device: Device = "auto"
    amp: Amp = "auto"
    channels_last: bool = True
    workers: int = 0
    sync_bn: bool | None = None  # BatchNorm statistics over all processes; None: on for multi-process CUDA runs

    def validate(self) -> None:
        """Reject values no run could use, naming the option."""
        positive = ("epochs", "batch_size", "embedding_dim", "eval_every", "samples_per_class")
        for name in positive:
            if getattr(self, name) <= 0:
                raise BadInput(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.lr <= 0:
            raise BadInput(f"--lr must be positive, got {self.lr}")
        if self.warmup_epochs < 0 or self.warmup_epochs >= self.epochs and self.warmup_epochs:
            raise BadInput(f"--warmup-epochs {self.warmup_epochs} must be >= 0 and below --epochs {self.epochs}")
        if self.sampler == "balanced" and self.batch_size % self.samples_per_class:
            raise BadInput(
                f"--batch-size {self.batch_size} is not a multiple of --samples-per-class {self.samples_per_class}",
                hint="the balanced sampler draws P classes x K images",
            )
        for name, allowed in (("sampler", Sampler), ("schedule", Schedule), ("amp", Amp), ("device", Device)):
            if getattr(self, name) not in allowed.__args__:
                raise BadInput(f"--{name} '{getattr(self, name)}' is not one of {list(allowed.__args__)}")
        if not 0 <= self.val_fraction < 0.5:
            raise BadInput(f"--val-fraction must be in [0, 0.5), got {self.val_fraction}", hint="e.g. 0.2 holds out a fifth of the training classes")
        if self.pool not in ("avg", "max", "avg+max"):
            raise BadInput(f"--pool '{self.pool}' is not one of ['avg', 'max', 'avg+max']")
        if not (self.sync_bn is None or isinstance(self.sync_bn, bool)):
            raise BadInput(f"sync_bn must be true, false or null (automatic), got {self.sync_bn!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> TrainConfig:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise BadInput(f"{source}: unknown setting(s) {unknown}", hint=f"valid settings: {', '.join(sorted(names))}")
        return cls(**d)


def resolve_config(overrides: dict[str, Any], recipe: str | None = None) -> TrainConfig:
    """Defaults, then the recipe, then explicit CLI values (``None`` means "not given")."""
    merged: dict[str, Any] = {}
    if recipe:
        merged.update(load_recipe(recipe))
    merged.update({k: v for k, v in overrides.items() if v is not None})
    cfg = TrainConfig.from_dict(merged, source=f"recipe '{recipe}'" if recipe else "options")
    cfg.validate()
    return cfg
