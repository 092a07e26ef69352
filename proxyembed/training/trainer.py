"""The training loop: proxy losses on a zero-shot split, evaluated on the unseen classes.

Writes the run dir of docs/architecture.md (layout and payload: :mod:`.run_dir`): ``config.json`` (resolved),
``metrics.jsonl`` (one line per epoch; epoch 0, the untrained network, with ``eval_untrained``), ``best.pt`` / ``last.pt`` and
``training_curves.png``. The optimizer and schedule come from :mod:`.optim`, the device and autocast
dtype from :mod:`.device`, the evaluation preprocessing from :mod:`.eval_preprocess`, the validation
classes and loaders from :mod:`.loaders`, the whitening from :mod:`.whitening`, the checkpoint contents
from :mod:`.checkpoint` and the progress hooks from :mod:`.reporting`; this module keeps the loop. A killed run
continues with ``resume=True`` from ``last.pt``; per-epoch reseeding makes the continuation draw the
same batches and augmentations the uninterrupted run would have.

Launched by ``torchrun`` the run is data-parallel (:mod:`.distributed`): every process trains on its
share of each epoch with ``batch_size`` images per step, rank 0 alone writes the run dir, and the
checkpoints hold the unwrapped network, so ``eval``, ``export`` and ``--resume`` read them unchanged.
``--resume`` under torchrun needs the run dir on a filesystem every rank can read.
"""

from __future__ import annotations

import math
import random
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from proxyembed.data import DataSplit, resolve_data
from proxyembed.data.shard_dataset import EpochStream, ShardDataset, shard_loader
from proxyembed.data.torch_dataset import TrainDataset, normalize_batch, train_transform
from proxyembed.data.types import Sample
from proxyembed.losses import build_loss
from proxyembed.models import ModelConfig, build_embedder
from proxyembed.runtime.errors import BadInput, ProxyEmbedError
from proxyembed.runtime.metrics import NMI_AUTO_MAX_ITEMS, nmi_wanted
from proxyembed.tracking import Tracking

from .checkpoint import add_resume_states, checkpoint_payload, load_checkpoint, save_checkpoint
from .config import TrainConfig
from .device import amp_dtype, select_device
from .distributed import (
    all_reduce_mean,
    average_gradients,
    barrier,
    broadcast_from_main,
    embed_sharded,
    evaluate_sharded,
    process_group,
    shard_bounds,
    sync_batchnorm,
    unused_parameters,
    world_from_env,
    wrap_model,
)
from .eval_preprocess import eval_spec
from .loaders import hold_out_validation, loader_settings, train_loader
from .model_eval import embed_samples, evaluate_model
from .optim import WeightAverage, build_optimizer, build_scheduler
from .plots import plot_curves
from .reporting import TrainingReporter
from .run_caches import RunCaches, eval_samples, open_run_caches
from .run_dir import (
    BEST,
    CURVES_NAME,
    LAST,
    VAL_PREFIX,
    CheckpointPayload,
    chosen_record,
    holds_run,
    metrics_of,
    read_history,
    selection_key,
    write_config,
    write_history,
)
from .whitening import WHITEN_MAX_IMAGES, Whitening, whitened, whitening_images


class TrainingFailed(ProxyEmbedError):
    """Training itself went wrong (e.g. the loss diverged): exit code 1, with what to try."""

    exit_code = 1


@dataclass
class TrainResult:
    """What a finished run reports: its folder and the metrics before (empty without ``eval_untrained``) and after training."""

    run_dir: Path
    initial: dict[str, float]
    final: dict[str, float]
    best: dict[str, float]
    best_epoch: int


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Trainer:
    """One training run. Build it with a resolved config and an output folder, then :meth:`run`."""

    def __init__(
        self, cfg: TrainConfig, out: Path, *, resume: bool = False, reporter: TrainingReporter | None = None, tracking: Tracking | None = None
    ) -> None:
        self.out = Path(out)
        self.tracking = tracking or Tracking()  # --log: the trackers mirror metrics.jsonl (rank 0 only)
        self.world = world_from_env()
        self.reporter = (reporter or TrainingReporter()) if self.world.is_main else TrainingReporter()
        self.resume_from = None
        if resume:
            if not (self.out / LAST).is_file():
                raise BadInput(f"--resume: '{self.out}' has no {LAST} to resume from", hint="start a new run without --resume")
            self.resume_from = load_checkpoint(self.out, prefer=LAST)
            saved = TrainConfig.from_dict(self.resume_from.config, source=str(self.out / LAST))
            saved.epochs = max(cfg.epochs, saved.epochs) if cfg.epochs != TrainConfig.epochs else saved.epochs
            cfg = saved
        elif holds_run(self.out):
            raise BadInput(f"--out '{self.out}' already holds a run", hint="pass --resume to continue it, or choose another --out")
        elif self.out.exists() and not self.out.is_dir():
            raise BadInput(f"--out '{self.out}' is a file", hint="give a folder path for the run dir")
        cfg.validate()
        self.cfg = cfg
        self.device = select_device(cfg.device, self.world)
        self.amp_dtype = amp_dtype(cfg.amp, self.device)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed image size and batch: autotuned conv kernels pay off
        self.sync_bn = self.world.distributed and (self.device.type == "cuda" if cfg.sync_bn is None else cfg.sync_bn)
        if self.sync_bn and self.device.type != "cuda":
            raise BadInput("sync_bn: SyncBatchNorm needs CUDA devices", hint="set sync_bn to false or null for CPU training")

    # ---- setup -------------------------------------------------------------------------------
    def _setup(self) -> None:
        cfg = self.cfg
        _seed_everything(cfg.seed)
        self.data = resolve_data(cfg.data, eval_data=cfg.eval_data)
        for w in self.data.warnings:
            self.reporter.log(str(w), kind="warning")
        if not self.data.train and self.data.stream is None:
            raise BadInput(f"--data '{cfg.data}' has no training classes")
        self.spec = eval_spec(cfg, self.data.preprocess)
        self.val = hold_out_validation(self.data, cfg.val_fraction)
        computed = self._metric_names()  # a wrong --select-metric stops the run before any image is decoded
        if (VAL_PREFIX if self.val else "") + cfg.select_metric not in computed:
            choices = sorted(k for k in computed if not k.startswith(VAL_PREFIX))
            raise BadInput(f"--select-metric '{cfg.select_metric}' is not computed", hint=f"choose one of {choices}")
        self.fit_on = self._whitening_images()
        evaluated = eval_samples(self.data, self.val, self.fit_on)
        self.caches: RunCaches = open_run_caches(cfg, self.data.train, evaluated, self.spec, shared=self.world.distributed, phase=self._phase)
        transform = train_transform(self.spec, cfg.augment, crop_scale=cfg.crop_scale, hflip=cfg.hflip, squared=self.caches.train is not None)
        self.loader_settings = loader_settings(cfg, self.device, self.world)
        if self.data.stream is None:
            self.dataset: TrainDataset | ShardDataset = TrainDataset(self.data.train, transform, self.caches.train)
        else:  # tar shards, streamed (proxyembed.data.shard_dataset): read in order, so not cached
            self.dataset = ShardDataset(self.data.stream, transform, seed=cfg.seed, rank=self.world.rank, world=self.world.size)
        self.model_config = ModelConfig(cfg.backbone, cfg.embedding_dim, cfg.pool)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pretrained = "none" if self.resume_from else cfg.pretrained
            self.model = build_embedder(self.model_config, pretrained=pretrained)
        for w in caught:
            self.reporter.log(str(w.message), kind="warning")
        self.unused: set[str] = set()
        if self.world.distributed:  # DDP needs every trainable parameter to get a gradient
            self.unused = set(unused_parameters(self.model, torch.zeros(2, 3, self.spec.crop, self.spec.crop)))
            for name, p in self.model.named_parameters():
                p.requires_grad_(name not in self.unused)
            if self.unused:
                self.reporter.log(f"frozen {len(self.unused)} parameter(s) the embedding never uses: {', '.join(sorted(self.unused))}")
        self.loss_fn = build_loss(cfg.loss, self.dataset.num_classes, cfg.embedding_dim, **cfg.loss_params)
        if self.sync_bn:
            self.model = sync_batchnorm(self.model)
        self.model.to(self.device)
        self.loss_fn.to(self.device)
        if cfg.channels_last and self.device.type == "cuda":
            self.model.to(memory_format=torch.channels_last)
        self.loss_params = [p for p in self.loss_fn.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(cfg, self.model, self.loss_fn)
        self.scheduler = build_scheduler(cfg, self.optimizer)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.start_epoch = 0
        self.best_value = -math.inf
        self.history: list[dict[str, Any]] = []
        d = self.resume_from.data if self.resume_from is not None else {}
        if d:
            self.model.load_state_dict(d.get("training_model", d["model"]))
            self.loss_fn.load_state_dict(d["loss"])
            self.optimizer.load_state_dict(d["optimizer"])
            self.scheduler.load_state_dict(d["scheduler"])
            self.scaler.load_state_dict(d["scaler"])
            self.start_epoch = int(d["epoch"])
            self.best_value = float(d["best_value"])
            self.history = [h for h in read_history(self.out) if h["epoch"] <= self.start_epoch]
            self.reporter.log(f"resuming '{self.out}' after epoch {self.start_epoch}")
        self.ema = WeightAverage(self.model, cfg.ema_decay, updates=d.get("ema_updates", 0)) if cfg.ema_decay else None
        if self.ema and "training_model" in d:  # an averaged run: its "model" is the average
            self.ema.model.load_state_dict(d["model"])
        broadcast_from_main([*self.loss_fn.parameters(), *self.loss_fn.buffers()], self.world)
        # Wrapping broadcasts rank 0's weights; a frozen warm-up backbone leaves parameters without gradients.
        self.train_model = wrap_model(self.model, self.world, self.device, find_unused=cfg.warmup_epochs > 0)

    def _whitening_images(self) -> Sequence[Sample]:
        """The training images ``--whiten`` fits on at every evaluation, chosen once so the evaluation cache holds them:
        :func:`.whitening.whitening_images`, or for streamed shards an even stride of the stream read into memory once."""
        if not self.cfg.whiten:
            return []
        if self.data.stream is not None:
            return self.data.stream.sampled(WHITEN_MAX_IMAGES)
        return whitening_images(self.data.train)

    def _phase(self, label: str, n: int) -> Callable[[int], None]:
        """A progress display for ``n`` units of ``label`` work, started by its first ``advance`` (none when nothing is done)."""
        started: list[bool] = []

        def advance(k: int) -> None:
            if not started:
                started.append(True)
                self.reporter.epoch_start(0, n, label)
            self.reporter.advance(k)

        return advance

    def _loader(self, epoch: int) -> DataLoader | EpochStream:
        """This process's batches of ``epoch`` (:func:`.loaders.train_loader`, or :func:`~proxyembed.data.shard_dataset.shard_loader`)."""
        settings = self.loader_settings
        if isinstance(self.dataset, ShardDataset):
            cfg = self.cfg
            return shard_loader(self.dataset, cfg.batch_size, cfg.sampler, epoch, workers=settings["num_workers"], pin_memory=settings["pin_memory"])
        return train_loader(self.dataset, self.cfg, self.world, epoch, settings=settings)

    @property
    def eval_model(self) -> torch.nn.Module:
        """The network evaluation, checkpoints and export see: the weight average when there is one."""
        return self.ema.model if self.ema else self.model

    # ---- the loop ----------------------------------------------------------------------------
    def _evaluate(self, epoch: int) -> tuple[dict[str, float], Whitening | None]:
        """Test-class metrics, plus ``val/``-prefixed ones when validation classes are held out, and the
        whitening fitted for them (None when off): a checkpoint of this epoch saves that map.

        Data-parallel runs first give every rank rank 0's BatchNorm statistics (those it saves), then
        split the embedding over the ranks; progress shows rank 0's share.
        """
        splits = self._splits()
        sizes = [len(d.eval) for _, d in splits] + [len(d.gallery) for _, d in splits if d.gallery is not None] + [len(self.fit_on)]
        shares = [shard_bounds(n, self.world) for n in sizes]
        self.reporter.epoch_start(epoch, sum(hi - lo for lo, hi in shares), "eval")
        broadcast_from_main(self.eval_model.buffers(), self.world)
        model, whitening = self._whitened(self.fit_on)
        out: dict[str, float] = {}
        for prefix, split in splits:
            # fp32, not under autocast: metrics.jsonl and best.pt must agree with `proxyembed eval` and export validation.
            kw: dict[str, Any] = dict(device=self.device, nmi=self.cfg.nmi, on_batch=lambda k: self.reporter.advance(k), cache=self.caches.eval)
            if self.world.distributed:
                metrics = evaluate_sharded(model, split, self.spec, self.world, dim=self.cfg.embedding_dim, **kw)
            else:
                metrics = evaluate_model(model, split, self.spec, **kw)
            out.update({prefix + k: v for k, v in metrics.items()})
        return out, whitening

    def _splits(self) -> list[tuple[str, DataSplit]]:
        """The splits an evaluation scores, with their metrics.jsonl prefix: the test classes, then the validation classes."""
        return [("", self.data)] + ([(VAL_PREFIX, self.val)] if self.val else [])

    def _metric_names(self) -> set[str]:
        """The keys an evaluation returns (as :func:`~proxyembed.runtime.metrics.retrieval_metrics` names them), known
        before any evaluation runs."""
        names: set[str] = set()
        for prefix, split in self._splits():
            names |= {f"{prefix}recall@{k}" for k in split.ks} | {prefix + "map@r", prefix + "r_precision"}
            if not split.gallery and nmi_wanted(len(split.eval), self.cfg.nmi):
                names.add(prefix + "nmi")
        return names

    def _whitened(self, images: Sequence[Sample]) -> tuple[torch.nn.Module, Whitening | None]:
        """``eval_model`` with ``--whiten``'s map fitted on ``images`` now (:func:`.whitening.whitened`), embedding their
        pooled features on one process or split over the ranks."""
        kw: dict[str, Any] = dict(device=self.device, on_batch=lambda k: self.reporter.advance(k), normalize=False, cache=self.caches.eval)
        width = self.model.stage_width

        def embed(module: torch.nn.Module, samples: Sequence[Sample]) -> np.ndarray:
            if self.world.distributed:
                return embed_sharded(module, samples, self.spec, self.world, dim=width, **kw)
            return embed_samples(module, samples, self.spec, **kw)

        return whitened(self.eval_model, images, self.cfg.whiten, embed=embed)

    def _set_train_mode(self, epoch: int) -> None:
        self.model.train()
        frozen = epoch <= self.cfg.warmup_epochs
        for name, p in self.model.backbone.named_parameters(prefix="backbone"):
            p.requires_grad_(not frozen and name not in self.unused)
        if self.cfg.freeze_bn or frozen:
            for m in self.model.backbone.modules():
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                    m.eval()

    def _train_epoch(self, epoch: int) -> tuple[float, float]:
        """One epoch; returns the mean loss and images/s, both over all ranks."""
        world = self.world
        # One augmentation stream per (seed, epoch, rank); a single process keeps seed * 100003 + epoch.
        torch.manual_seed((self.cfg.seed * 100003 + epoch) * world.size + world.rank)
        self._set_train_mode(epoch)
        loader = self._loader(epoch)
        self.reporter.epoch_start(epoch, len(loader), "train")
        total, count, seen, t0 = 0.0, 0, 0, time.perf_counter()
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        for step, (x, y) in enumerate(loader, 1):
            x = normalize_batch(x.to(self.device, non_blocking=True), self.spec)
            y = y.to(self.device, non_blocking=True)
            if self.cfg.channels_last and self.device.type == "cuda":
                x = x.to(memory_format=torch.channels_last)
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                emb = self.train_model(x)
            loss = self.loss_fn(emb.float(), y)
            mean_loss = all_reduce_mean(loss, world)  # non-finite on any rank -> every rank stops here
            if not torch.isfinite(mean_loss):
                raise TrainingFailed(
                    f"the loss became {mean_loss.item()} at epoch {epoch}, step {step}",
                    hint="lower --lr or --proxy-lr-mult, or use --amp none; the last good checkpoint is kept",
                )
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            average_gradients(self.loss_params, world)
            if self.cfg.grad_clip > 0:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if self.ema:
                self.ema.update(self.model)
            step_loss = mean_loss.item()
            total += step_loss * len(x)
            count += len(x)
            if self.tracking:
                lrs = {g.get("name", str(i)): g["lr"] for i, g in enumerate(self.optimizer.param_groups)}
                self.tracking.log_step((epoch - 1) * len(loader) + step, step_loss, lrs)
            seen += len(x) * world.size  # every rank steps with an equal batch
            self.reporter.advance(1, loss=total / count, ips=seen / (time.perf_counter() - t0))
        return total / max(count, 1), seen / (time.perf_counter() - t0)

    def _payload(self, epoch: int, metrics: dict[str, float], whitening: Whitening | None, full: bool) -> CheckpointPayload:
        """This epoch's checkpoint contents; ``full`` adds the states ``--resume`` needs."""
        payload = checkpoint_payload(
            self.model_config, self.eval_model, self.cfg.loss, self.loss_fn, self.spec, self.cfg.to_dict(),
            epoch=epoch, metrics=metrics, best_value=self.best_value, train_classes=self.dataset.num_classes, whitening=whitening,
        )
        if full:
            trained, updates = (self.model, self.ema.updates) if self.ema else (None, None)
            add_resume_states(payload, self.optimizer, self.scheduler, self.scaler, training_model=trained, ema_updates=updates)
        return payload

    def _record(self, record: dict[str, Any], times: dict[str, float]) -> None:
        """Append an epoch's record to metrics.jsonl and the curves, and send it with its stage ``times`` to the trackers."""
        self.history.append(record)
        if self.world.is_main:
            write_history(self.out, self.history)
            plot_curves(self.history, self.out / CURVES_NAME, title=f"{self.cfg.backbone} / {self.cfg.loss} on {self.data.name}")
        self.tracking.log_epoch(record, times, self.out / CURVES_NAME)
        self.reporter.epoch_end(record)

    def _save(self, name: str, epoch: int, metrics: dict[str, float], whitening: Whitening | None, full: bool) -> None:
        """Write a checkpoint of the unwrapped modules (no ``module.`` prefixes), with ``whitening`` fitted to
        this epoch's weights; rank 0 only."""
        if self.world.is_main:
            save_checkpoint(self.out / name, self._payload(epoch, metrics, whitening, full).to_dict())

    def run(self) -> TrainResult:
        """Train for the configured epochs (continuing a resumed run) and return the metrics."""
        with process_group(self.world, self.device):
            return self._run()

    def _run(self) -> TrainResult:
        self._setup()
        barrier(self.world)  # every rank has checked --out and --resume before rank 0 writes into it
        if self.world.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            autocast = str(self.amp_dtype).removeprefix("torch.") if self.amp_dtype else None
            write_config(self.out, self.cfg.to_dict(), {"loader": self.loader_settings, "cache": self.caches.info, "autocast": autocast})
            self.tracking.start(self.out, self.cfg.to_dict())
        self.reporter.log(self.data.describe())
        self.reporter.log(_describe_pipeline(self.loader_settings, self.caches))
        amp = f", autocast {self.amp_dtype}" if self.amp_dtype else ""
        self.reporter.log(f"device {self.device}{amp}, {torch.get_num_threads()} threads")
        if self.data.gallery is None and self.cfg.nmi == "auto" and not nmi_wanted(len(self.data.eval), "auto"):
            self.reporter.log(f"NMI left out: {len(self.data.eval):,} evaluation images > {NMI_AUTO_MAX_ITEMS:,} (--nmi always computes it)")
        if self.world.distributed:
            self.reporter.log(
                f"data-parallel over {self.world.size} processes ({torch.distributed.get_backend()}): batch {self.cfg.batch_size} "
                f"per process, global batch {self.cfg.batch_size * self.world.size}, SyncBatchNorm {'on' if self.sync_bn else 'off'}"
            )
        key = selection_key(self.cfg.val_fraction, self.cfg.select_metric)  # None: best.pt is the last evaluated epoch
        if key is None:
            self.reporter.log("best.pt: the last evaluated epoch (--val-fraction 0.2 would choose among epochs on held-out training classes)")
        if self.start_epoch == 0 and self.cfg.eval_untrained:
            t0 = time.perf_counter()
            initial, _ = self._evaluate(0)
            elapsed = time.perf_counter() - t0
            self._record({"epoch": 0, "loss": None, **initial, "time_s": elapsed}, {"eval_s": elapsed})
        else:
            initial = metrics_of(self.history[0]) if self.history and self.history[0]["epoch"] == 0 else {}
        last_metrics: dict[str, float] = {}
        for epoch in range(self.start_epoch + 1, self.cfg.epochs + 1):
            t0 = time.perf_counter()
            lr = self.optimizer.param_groups[0]["lr"]
            loss, ips = self._train_epoch(epoch)
            times = {"train_s": time.perf_counter() - t0}
            self.scheduler.step()
            record: dict[str, Any] = {"epoch": epoch, "loss": loss, "lr": lr, "images_per_s": ips}
            whitening = None  # last.pt of an epoch without evaluation has no map fitted to its weights
            if epoch % self.cfg.eval_every == 0 or epoch == self.cfg.epochs:
                t_eval = time.perf_counter()
                last_metrics, whitening = self._evaluate(epoch)
                times["eval_s"] = time.perf_counter() - t_eval
                record.update(last_metrics)
                if key is None or last_metrics[key] >= self.best_value:  # a tie goes to the later, longer-trained epoch
                    if key:
                        self.best_value = last_metrics[key]
                    self._save(BEST, epoch, last_metrics, whitening, full=False)
            record["time_s"] = time.perf_counter() - t0
            self._save(LAST, epoch, last_metrics, whitening, full=True)
            self._record(record, times)
        self.tracking.log_artifact(self.out / BEST, "checkpoints")
        best_rec = chosen_record(self.history, key) or self.history[-1]
        return TrainResult(self.out, initial, metrics_of(self.history[-1]), metrics_of(best_rec), best_rec["epoch"])


def _describe_pipeline(settings: dict[str, Any], caches: RunCaches) -> str:
    """One log line: the DataLoader workers and where each image cache is."""
    parts = [f"{settings['num_workers']} loader worker(s)"]
    for name in ("train", "eval"):
        info = caches.info.get(name)
        if info:
            done = f"built in {info['seconds']:.1f}s" if info["built"] else "reused"
            parts.append(f"{name} images cached in {info['where']} ({info['nbytes'] / 2**20:.1f} MiB, {done})")
    if caches.info.get("mode") == "off":
        parts.append("no image cache")
    return "input: " + ", ".join(parts)


def train(
    cfg: TrainConfig, out: Path, *, resume: bool = False, reporter: TrainingReporter | None = None, tracking: Tracking | None = None
) -> TrainResult:
    """Run a training job (see :class:`Trainer`); ``tracking`` mirrors it into experiment trackers (``--log``)."""
    return Trainer(cfg, out, resume=resume, reporter=reporter, tracking=tracking).run()
