"""CLI commands of the training stage: ``train``, ``eval`` and ``data``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from ._common import console, user_errors

PANEL = "Training"


class _RichReporter:
    """Shows training with a rich progress bar (loss, images/s) and one summary line per epoch."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        )
        self.task: Any = None

    def __enter__(self) -> _RichReporter:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def log(self, message: str) -> None:
        self.progress.console.print(message)

    def epoch_start(self, epoch: int, steps: int, phase: str) -> None:
        if self.task is not None:
            self.progress.remove_task(self.task)
        label = f"epoch {epoch} {phase}" if epoch else "untrained eval"
        self.task = self.progress.add_task(label, total=steps, stats="")

    def advance(self, n: int, **fields: float) -> None:
        stats = "  ".join(f"{k} {v:.3f}" if k == "loss" else f"{v:.0f} img/s" for k, v in fields.items())
        self.progress.update(self.task, advance=n, stats=stats)

    def epoch_end(self, record: dict[str, Any]) -> None:
        parts = [f"epoch {record['epoch']:>3}"]
        if record.get("loss") is not None:
            parts.append(f"loss {record['loss']:.4f}")
        parts += [f"{k} {v:.4f}" for k, v in record.items() if k.startswith(("recall@", "map@r", "nmi"))]
        parts.append(f"{record['time_s']:.1f}s")
        self.progress.console.print("  ".join(parts), highlight=False)


@user_errors
def train_cmd(
    out: Annotated[Path, typer.Option("--out", "-o", help="Run dir to create (config, metrics, checkpoints, curves).")] = Path("runs/default"),
    data: Annotated[str | None, typer.Option(help="'synthetic[:seed=N,...]', a class-folder dataset, or a CUB/Cars/SOP/In-Shop root.")] = None,
    eval_data: Annotated[str | None, typer.Option("--eval-data", help="Folder of evaluation classes (default: split --data by class).")] = None,
    recipe: Annotated[str | None, typer.Option(help="Shipped recipe name (e.g. cub200) or a JSON file of settings; options override it.")] = None,
    backbone: Annotated[str | None, typer.Option(help="timm model name, e.g. resnet50 or vit_small_patch16_224.dino.")] = None,
    pretrained: Annotated[str | None, typer.Option(help="'hub' (download, random init if offline), 'none', or a local weights file.")] = None,
    pool: Annotated[str | None, typer.Option(help="Pooling of CNN feature maps: avg, max or avg+max.")] = None,
    embedding_dim: Annotated[int | None, typer.Option("--embedding-dim", help="Embedding size.")] = None,
    loss: Annotated[str | None, typer.Option(help="proxy_anchor, proxy_nca, proxy_nca++, nir or triplet.")] = None,
    loss_param: Annotated[list[str] | None, typer.Option("--loss-param", help="Loss hyper-parameter KEY=VALUE (repeatable), e.g. alpha=32.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Training epochs.")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="Images per batch (per process under torchrun).")] = None,
    sampler: Annotated[str | None, typer.Option(help="random (as Proxy-Anchor) or balanced (P classes x K images).")] = None,
    samples_per_class: Annotated[int | None, typer.Option("--samples-per-class", help="K of the balanced sampler.")] = None,
    lr: Annotated[float | None, typer.Option(help="Backbone learning rate (AdamW).")] = None,
    proxy_lr_mult: Annotated[float | None, typer.Option("--proxy-lr-mult", help="Proxy learning rate as a multiple of --lr.")] = None,
    aux_lr_mult: Annotated[
        float | None, typer.Option("--aux-lr-mult", help="Learning rate of other loss parameters (NIR's flow) as a multiple of --lr.")
    ] = None,
    weight_decay: Annotated[float | None, typer.Option("--weight-decay")] = None,
    optimizer: Annotated[str | None, typer.Option(help="adamw (decoupled weight decay) or adam (L2 weight decay).")] = None,
    adam_eps: Annotated[float | None, typer.Option("--adam-eps", help="Adam's epsilon (ProxyNCA++ uses 1.0).")] = None,
    schedule: Annotated[
        str | None, typer.Option(help="cosine, step (x0.5 every --step-size epochs), multistep (at a recipe's milestones) or none.")
    ] = None,
    warmup_epochs: Annotated[int | None, typer.Option("--warmup-epochs", help="Epochs with the backbone frozen at the start.")] = None,
    freeze_bn: Annotated[bool | None, typer.Option("--freeze-bn/--no-freeze-bn", help="Keep BatchNorm statistics fixed.")] = None,
    image_size: Annotated[int | None, typer.Option("--image-size", help="Model input size (square) for training and evaluation.")] = None,
    augment: Annotated[
        str | None, typer.Option(help="Training augmentation: none (the evaluation geometry), light, standard (Proxy-Anchor's) or strong.")
    ] = None,
    crop_scale: Annotated[
        str | None, typer.Option("--crop-scale", help="Random-resized-crop area range LOW,HIGH (overrides the preset), e.g. 0.5,1.")
    ] = None,
    hflip: Annotated[bool | None, typer.Option("--hflip/--no-hflip", help="Random horizontal flips (default: the preset's).")] = None,
    eval_fit: Annotated[
        str | None,
        typer.Option("--eval-fit", help="How evaluation and the exported model square an image: center_crop, squash or letterbox."),
    ] = None,
    resize: Annotated[int | None, typer.Option(help="With --eval-fit center_crop: resize the shorter side to this before cropping.")] = None,
    eval_every: Annotated[int | None, typer.Option("--eval-every", help="Evaluate every N epochs.")] = None,
    select_metric: Annotated[str | None, typer.Option("--select-metric", help="Metric that picks best.pt, e.g. recall@1 or map@r.")] = None,
    val_fraction: Annotated[
        float | None, typer.Option("--val-fraction", help="Hold out this fraction of training classes to pick best.pt (not the test classes).")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda.")] = None,
    amp: Annotated[str | None, typer.Option(help="Mixed precision on CUDA: auto, bf16, fp16 or none.")] = None,
    workers: Annotated[int | None, typer.Option(help="Data-loading worker processes.")] = None,
    sync_bn: Annotated[
        bool | None, typer.Option("--sync-bn/--no-sync-bn", help="BatchNorm statistics over all torchrun processes (default: on on CUDA).")
    ] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out from its last.pt.")] = False,
) -> None:
    """Train an embedding network with a proxy loss and evaluate it on unseen classes.

    Data-parallel on several GPUs or machines: launch with ``torchrun --nproc-per-node N -m proxyembed train ...``.
    """
    from proxyembed.runtime.errors import BadInput
    from proxyembed.training.config import resolve_config
    from proxyembed.training.distributed import is_main_process
    from proxyembed.training.trainer import train

    params: dict[str, Any] = {}
    for item in loss_param or []:
        key, sep, raw = item.partition("=")
        if not sep:
            raise BadInput(f"--loss-param '{item}' is not KEY=VALUE", hint="e.g. --loss-param alpha=32")
        try:
            params[key] = json.loads(raw)
        except json.JSONDecodeError:
            params[key] = raw
    overrides = dict(
        data=data, eval_data=eval_data, backbone=backbone, pretrained=pretrained, pool=pool, embedding_dim=embedding_dim,
        loss=loss, loss_params=params or None, epochs=epochs, batch_size=batch_size, sampler=sampler,
        samples_per_class=samples_per_class, lr=lr, proxy_lr_mult=proxy_lr_mult, aux_lr_mult=aux_lr_mult, weight_decay=weight_decay,
        optimizer=optimizer, adam_eps=adam_eps, schedule=schedule, warmup_epochs=warmup_epochs, freeze_bn=freeze_bn, image_size=image_size,
        augment=augment, crop_scale=_pair(crop_scale, "--crop-scale"), hflip=hflip, eval_fit=eval_fit, resize=resize,
        eval_every=eval_every, select_metric=select_metric, val_fraction=val_fraction, seed=seed, device=device, amp=amp, workers=workers,
        sync_bn=sync_bn,
    )
    cfg = resolve_config(overrides, recipe)
    with _RichReporter() as reporter:
        result = train(cfg, out, resume=resume, reporter=reporter)
    if not is_main_process():
        return
    r0, r1 = result.initial.get("recall@1"), result.final.get("recall@1")
    console.print(
        f"[bold green]done[/]: Recall@1 on unseen classes {r0:.4f} (untrained) -> {r1:.4f} (final), "
        f"best {result.best.get('recall@1', float('nan')):.4f} at epoch {result.best_epoch}; run dir {result.run_dir}",
        highlight=False,
    )


def _pair(text: str | None, option: str) -> tuple[float, float] | None:
    """'0.5,1' as (0.5, 1.0); None stays None."""
    from proxyembed.runtime.errors import BadInput

    if text is None:
        return None
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError as exc:
        raise BadInput(f"{option} '{text}' is not two numbers LOW,HIGH", hint=f"e.g. {option} 0.5,1") from exc
    return lo, hi


@user_errors
def eval_cmd(
    run: Annotated[Path, typer.Argument(help="Run dir (uses best.pt) or a checkpoint file.")],
    data: Annotated[str | None, typer.Option(help="Evaluation data (default: the run's own --data and split).")] = None,
    eval_data: Annotated[str | None, typer.Option("--eval-data", help="Folder of evaluation classes.")] = None,
    last: Annotated[bool, typer.Option("--last", help="Evaluate last.pt instead of best.pt.")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    json_out: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON.")] = False,
) -> None:
    """Evaluate a trained run on held-out classes: Recall@K, MAP@R, R-Precision, NMI."""
    from rich.table import Table

    from proxyembed.data import resolve_data
    from proxyembed.training.checkpoint import BEST, LAST, load_checkpoint
    from proxyembed.training.evaluate import evaluate_model
    from proxyembed.training.trainer import _select_device

    ckpt = load_checkpoint(run, prefer=LAST if last else BEST)
    spec_data = data or ckpt.config.get("data", "synthetic")
    split = resolve_data(spec_data, eval_data=eval_data if data else (eval_data or ckpt.config.get("eval_data")))
    dev = _select_device(device)
    metrics = evaluate_model(ckpt.build_model().to(dev), split, ckpt.preprocess, device=dev)
    if json_out:
        typer.echo(json.dumps({"checkpoint": str(ckpt.path), "epoch": ckpt.epoch, "data": split.fingerprint(), "metrics": metrics}, indent=2))
        return
    table = Table(title=f"{ckpt.path} (epoch {ckpt.epoch}) on {split.name}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in metrics.items():
        table.add_row(k, f"{v:.4f}")
    console.print(table)


@user_errors
def data_cmd(
    out: Annotated[Path, typer.Argument(help="Folder to write (train/ and eval/, one subfolder per class).")],
    spec: Annotated[str, typer.Option("--data", help="Which built-in data: 'synthetic[:seed=N,classes...]'.")] = "synthetic",
    force: Annotated[bool, typer.Option("--force", help="Write into an existing non-empty folder.")] = False,
) -> None:
    """Write the built-in synthetic dataset to disk as image folders (for index, search and check)."""
    from proxyembed.data.export_folder import write_split
    from proxyembed.data.spec import resolve_data
    from proxyembed.runtime.errors import BadInput

    if not (spec == "synthetic" or spec.startswith("synthetic:")):
        raise BadInput(f"--data '{spec}': only the built-in synthetic data can be written", hint="use 'synthetic' or 'synthetic:seed=N'")
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not force)):
        raise BadInput(f"'{out}' exists and is not an empty folder", hint="choose another folder or pass --force")
    n = write_split(resolve_data(spec), out)
    console.print(f"wrote {n} images to {out}/train and {out}/eval", highlight=False)


def register(app: typer.Typer) -> None:
    """Add the training stage's commands to the main app."""
    app.command("train", rich_help_panel=PANEL)(train_cmd)
    app.command("eval", rich_help_panel=PANEL)(eval_cmd)
    app.command("data", rich_help_panel=PANEL)(data_cmd)
