"""The training configuration: one typed dataclass, resolved once as CLI over recipe over defaults.

Recipes are shipped JSON files (``--recipe cub200``, see :mod:`.recipes`) or any JSON path; they hold the
published settings for the standard benchmarks. The resolved config is written to the run dir, and
``--resume`` reads it back, so a resumed run trains exactly as the original.

Under ``torchrun`` (see :mod:`proxyembed.training.distributed`) ``batch_size`` is the batch of each
process: the global batch, which sets the effective learning rate, is ``batch_size`` x the number of
processes. Scale ``lr`` yourself when changing the process count.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal, get_type_hints

from proxyembed.data.augment import AUGMENT_PRESETS
from proxyembed.data.image_cache import CacheMode
from proxyembed.models.config import Pooling as Pool
from proxyembed.runtime.encoder import DeviceChoice as Device
from proxyembed.runtime.errors import BadInput
from proxyembed.runtime.metrics import NmiMode
from proxyembed.runtime.preprocess import DEFAULT_DECODE, Decode
from proxyembed.runtime.preprocess import Fit as EvalFit
from proxyembed.runtime.schema import Field, validate

from .loss_table import LOSS_CLASSES
from .recipes import load_recipe

# Closed choices: the CLI takes its option types from here, so --help lists them and the parser rejects
# typos; from_dict rejects values outside them in recipes and config.json. Pool, Device and EvalFit are
# defined where their values are used (the model, the runtime) and imported above. LossName and Augment are
# derived from the registries they choose from (loss_table.py, which proxyembed.losses builds its registry
# from; data.augment's presets), never restated.
LossName = Literal[tuple(LOSS_CLASSES)]  # type: ignore[valid-type]
Augment = Literal[tuple(AUGMENT_PRESETS)]  # type: ignore[valid-type]
Sampler = Literal["random", "balanced"]
Schedule = Literal["cosine", "step", "multistep", "none"]
Optimizer = Literal["adamw", "adam"]
Amp = Literal["auto", "bf16", "fp16", "none"]
# The names runtime.metrics.retrieval_metrics gives its results; which K it computes is the data's (checked by
# the trainer once the data is known), and nmi only where --nmi lets it.
SELECTABLE_METRIC = re.compile(r"recall@[1-9][0-9]*|map@r|r_precision|nmi")


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
    # per process; the global batch is batch_size x the torchrun world size. 32, not 64: twice the steps in the same
    # epochs, +2.5 R@1 / +1.1 MAP@R on held-out training classes over five folds (docs/defaults.md, rounds 13 and 14)
    batch_size: int = 32
    sampler: Sampler = "random"
    samples_per_class: int = 4
    lr: float = 1.4e-3  # not 1e-3: with the 70-100% crops, +1.2 MAP@R on held-out training classes (defaults.md, round 16)
    head_lr_mult: float = 1.0
    proxy_lr_mult: float = 100.0
    # other loss parameters, e.g. NIR's flow: half the backbone's lr, as the official code's 5e-4 at 1e-3
    # (Roth 2022: 1e-5 x 50, which the NIR recipes use)
    aux_lr_mult: float = 0.5
    weight_decay: float = 1e-4
    # "adam" adds weight decay to the gradient (L2, as the NIR and ProxyNCA++ code); "adamw" decouples it
    optimizer: Optimizer = "adamw"
    adam_eps: float = 1e-8  # ProxyNCA++ uses 1.0: Adam then steps about lr x gradient for small gradients
    schedule: Schedule = "none"  # constant: measured better than cosine on short runs (docs/defaults.md)
    step_size: int = 10
    step_gamma: float = 0.5  # the factor of both "step" and "multistep"
    milestones: list[int] = field(default_factory=list)  # epochs where "multistep" multiplies the lr by step_gamma
    warmup_epochs: int = 0
    freeze_bn: bool = False
    # Exponential moving average of the weights, evaluated, saved and exported instead of the last step's
    # weights; 0 turns it off (docs/defaults.md has the measurement behind the default).
    ema_decay: float = 0.0
    # The map after training: within-class whitening of the pooled features, reduced to the embedding size, fitted on
    # the training images at each evaluation and saved as the head (proxyembed.training.whitening): the whitening's
    # shrinkage, in mean eigenvalues; 0 turns it off (the trained head as it is).
    whiten: float = 2.0
    grad_clip: float = 10.0
    image_size: int | None = None  # model input size, training and evaluation; default from the data
    resize: int | None = None  # evaluation resize of the shorter side before a centre crop; default from the data
    # Training augmentation preset (proxyembed.data.augment.AUGMENT_PRESETS); crop_scale and hflip override it.
    augment: Augment = "light"
    crop_scale: tuple[float, float] | None = None  # random-resized-crop area range, e.g. (0.5, 1.0)
    hflip: bool | None = None  # random horizontal flips; None: the preset's choice
    # How evaluation, export validation and the runtime make an image square (PreprocessSpec.fit). None: the
    # data's own choice where it has one (the synthetic set declares its centre crop), else the runtime's DEFAULT_FIT.
    eval_fit: EvalFit | None = None
    # How a JPEG is read for evaluation, export and the runtime (PreprocessSpec.decode); the runtime's default.
    decode: Decode = DEFAULT_DECODE
    eval_every: int = 1
    # Evaluate the untrained network first (metrics.jsonl's epoch 0): a point on the curve at the price of a whole
    # evaluation (and whitening fit), which a run does not need to train or pick best.pt, so off by default.
    eval_untrained: bool = False
    nmi: NmiMode = "auto"  # auto: up to runtime.metrics.NMI_AUTO_MAX_ITEMS evaluation images (SOP's k-means would cost more than the rest)
    select_metric: str = "recall@1"
    val_fraction: float = 0.0  # training classes held out to pick best.pt, instead of the test classes
    seed: int = 0
    device: Device = "auto"
    amp: Amp = "auto"
    channels_last: bool = True
    # DataLoader worker processes; None: chosen for the device (proxyembed.training.loaders.loader_settings, measured
    # in docs/benchmarks.md); config.json's "input_pipeline" records what the run used.
    workers: int | None = None
    # Decoded-image cache (proxyembed.data.image_cache): auto | ram | disk | off; its folder (None: the user's cache
    # dir, runtime.system.user_cache_dir) and the RAM auto may fill (None: a quarter of the available memory).
    cache: CacheMode = "auto"
    cache_dir: str | None = None
    cache_ram_gb: float | None = None
    sync_bn: bool | None = None  # BatchNorm statistics over all processes; None: on for multi-process CUDA runs

    def validate(self) -> None:
        """Reject values no run could use, naming the option: ranges and combinations (the types of the fields,
        checked by :meth:`from_dict` and the CLI's parser, hold the closed choices)."""
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
        if self.crop_scale is not None:
            lo, hi = self.crop_scale
            if not 0 < lo <= hi <= 1:
                raise BadInput(f"--crop-scale {lo},{hi} must satisfy 0 < low <= high <= 1", hint="e.g. --crop-scale 0.5,1")
        if not 0 <= self.ema_decay < 1:
            raise BadInput(f"ema_decay must be in [0, 1), got {self.ema_decay}", hint="e.g. 0.99; 0 turns weight averaging off")
        if not self.whiten >= 0:
            raise BadInput(f"--whiten must be >= 0, got {self.whiten}", hint="e.g. 2; 0 turns whitening off")
        if not self.adam_eps > 0:
            raise BadInput(f"--adam-eps must be positive, got {self.adam_eps}")
        if self.schedule == "multistep" and (not self.milestones or self.milestones != sorted(set(self.milestones)) or self.milestones[0] < 1):
            raise BadInput(
                f"schedule 'multistep' needs increasing positive milestones, got {self.milestones}",
                hint='e.g. "milestones": [140, 230] in the recipe',
            )
        if not 0 <= self.val_fraction < 0.5:
            raise BadInput(f"--val-fraction must be in [0, 0.5), got {self.val_fraction}", hint="e.g. 0.2 holds out a fifth of the training classes")
        if self.workers is not None and self.workers < 0:
            raise BadInput(f"--workers must be >= 0, got {self.workers}", hint="0 loads in the training process; omit it to choose for the device")
        if self.cache_ram_gb is not None and not self.cache_ram_gb >= 0:
            raise BadInput(f"--cache-ram-gb must be >= 0, got {self.cache_ram_gb}")
        if not SELECTABLE_METRIC.fullmatch(self.select_metric):
            raise BadInput(
                f"--select-metric '{self.select_metric}' is not a retrieval metric evaluation computes",
                hint="choose recall@K (K one of the data's, e.g. 1), map@r, r_precision or nmi",
            )
        if self.select_metric == "nmi" and self.nmi == "never":
            raise BadInput("--select-metric nmi needs NMI computed, but --nmi is never", hint="pass --nmi always or choose recall@1")
        if not (self.sync_bn is None or isinstance(self.sync_bn, bool)):
            raise BadInput(f"sync_bn must be true, false or null (automatic), got {self.sync_bn!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> TrainConfig:
        """Build a config from recipe / config.json settings, refusing unknown keys and wrongly typed values."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise BadInput(f"{source}: unknown setting(s) {unknown}", hint=f"valid settings: {', '.join(sorted(names))}")
        d = dict(d)
        if d.get("crop_scale") is not None:  # JSON has no tuples; the CLI hands over its LOW,HIGH split at the comma
            try:
                lo, hi = (float(v) for v in d["crop_scale"])
            except (TypeError, ValueError) as exc:
                raise BadInput(
                    f"{source}: crop_scale must be two numbers, got {d['crop_scale']!r}", hint='e.g. --crop-scale 0.5,1 or "crop_scale": [0.5, 1]'
                ) from exc
            d["crop_scale"] = (lo, hi)
        hints, defaults = get_type_hints(cls), cls()
        example = 'write it as JSON of that type, e.g. "{}": {}'
        validate(d, {key: Field(hints[key], hint=example.format(key, json.dumps(getattr(defaults, key)))) for key in d}, where=source)
        return cls(**d)


def resolve_config(overrides: dict[str, Any], recipe: str | None = None) -> TrainConfig:
    """Defaults, then the loss's own training defaults, then the recipe, then explicit CLI values.

    ``None`` in ``overrides`` means "not given". A loss's training defaults (``MetricLoss.train_defaults``,
    e.g. ProxyNCA++'s fast proxies, Proxy-Anchor's measured ``alpha``) replace the generic ones, so
    ``--loss proxy_nca++`` alone trains as its paper does; a recipe or an explicit option still wins.
    ``loss_params`` merge key by key, so ``--loss-param delta=0.2`` keeps the default ``alpha``.
    """
    from proxyembed.losses import loss_train_defaults

    given = {k: v for k, v in overrides.items() if v is not None}
    chosen = load_recipe(recipe) if recipe else {}
    loss = given.get("loss", chosen.get("loss", TrainConfig.loss))
    layers = (loss_train_defaults(loss), chosen, given)
    merged: dict[str, Any] = {k: v for layer in layers for k, v in layer.items()}
    params = [layer["loss_params"] for layer in layers if isinstance(layer.get("loss_params"), dict)]
    if params:  # one parameter given does not drop the loss's other defaults
        merged["loss_params"] = {k: v for p in params for k, v in p.items()}
    cfg = TrainConfig.from_dict(merged, source=f"recipe '{recipe}'" if recipe else "options")
    cfg.validate()
    return cfg
