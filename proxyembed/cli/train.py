"""CLI commands of the training stage: ``train``, ``eval`` and ``data``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, get_args

import typer

from proxyembed.runtime.metrics import NMI_AUTO_MAX_ITEMS, NmiMode
from proxyembed.runtime.preprocess import DEFAULT_FIT, Decode
from proxyembed.tracking.base import TrackerName
from proxyembed.training.config import Amp, Augment, CacheMode, Device, EvalFit, LossName, Optimizer, Pool, Sampler, Schedule, TrainConfig
from proxyembed.training.run_dir import DEFAULT_RUN_DIR

from ._common import console, err_console, given_options, print_json, user_errors

PANEL = "Training"
# Options show these real defaults in --help; whether a value was typed is asked of click (given_options),
# so a recipe's setting is overridden only by options actually given on the command line.
_DEFAULTS = TrainConfig()


@user_errors
def train_command(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option("--out", "-o", help="Run dir to create (config, metrics, checkpoints, curves).")] = DEFAULT_RUN_DIR,
    data: Annotated[str, typer.Option(help="'synthetic[:seed=N,...]', a class-folder dataset, or a CUB/Cars/SOP/In-Shop root.")] = _DEFAULTS.data,
    eval_data: Annotated[str | None, typer.Option("--eval-data", help="Folder of evaluation classes (default: split --data by class).")] = None,
    recipe: Annotated[str | None, typer.Option(help="Shipped recipe name (e.g. cub200) or a JSON file of settings; options override it.")] = None,
    backbone: Annotated[str, typer.Option(help="timm model name, e.g. resnet50 or vit_small_patch16_224.dino.")] = _DEFAULTS.backbone,
    pretrained: Annotated[
        str, typer.Option(help="'hub' (download, random init if offline), 'none', or a local weights file.")
    ] = _DEFAULTS.pretrained,
    pool: Annotated[Pool, typer.Option(help="Pooling of CNN feature maps: avg, max or avg+max.")] = _DEFAULTS.pool,
    embedding_dim: Annotated[int, typer.Option("--embedding-dim", help="Embedding size.")] = _DEFAULTS.embedding_dim,
    loss: Annotated[LossName, typer.Option(help="The metric-learning loss (one a file in proxyembed/losses).")] = _DEFAULTS.loss,
    loss_param: Annotated[list[str] | None, typer.Option("--loss-param", help="Loss hyper-parameter KEY=VALUE (repeatable), e.g. alpha=32.")] = None,
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = _DEFAULTS.epochs,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per batch (per process under torchrun).")] = _DEFAULTS.batch_size,
    sampler: Annotated[Sampler, typer.Option(help="random (as Proxy-Anchor) or balanced (P classes x K images).")] = _DEFAULTS.sampler,
    samples_per_class: Annotated[int, typer.Option("--samples-per-class", help="K of the balanced sampler.")] = _DEFAULTS.samples_per_class,
    lr: Annotated[float, typer.Option(help="Backbone learning rate (AdamW).")] = _DEFAULTS.lr,
    proxy_lr_mult: Annotated[float, typer.Option("--proxy-lr-mult", help="Proxy learning rate as a multiple of --lr.")] = _DEFAULTS.proxy_lr_mult,
    aux_lr_mult: Annotated[
        float, typer.Option("--aux-lr-mult", help="Learning rate of other loss parameters (NIR's flow) as a multiple of --lr.")
    ] = _DEFAULTS.aux_lr_mult,
    weight_decay: Annotated[float, typer.Option("--weight-decay")] = _DEFAULTS.weight_decay,
    optimizer: Annotated[Optimizer, typer.Option(help="adamw (decoupled weight decay) or adam (L2 weight decay).")] = _DEFAULTS.optimizer,
    adam_eps: Annotated[float, typer.Option("--adam-eps", help="Adam's epsilon (ProxyNCA++ uses 1.0).")] = _DEFAULTS.adam_eps,
    schedule: Annotated[
        Schedule, typer.Option(help="cosine, step (x0.5 every --step-size epochs), multistep (at a recipe's milestones) or none.")
    ] = _DEFAULTS.schedule,
    warmup_epochs: Annotated[int, typer.Option("--warmup-epochs", help="Epochs with the backbone frozen at the start.")] = _DEFAULTS.warmup_epochs,
    freeze_bn: Annotated[bool, typer.Option("--freeze-bn/--no-freeze-bn", help="Keep BatchNorm statistics fixed.")] = _DEFAULTS.freeze_bn,
    ema_decay: Annotated[
        float, typer.Option("--ema-decay", help="Evaluate, save and export a moving average of the weights with this decay (0: off).")
    ] = _DEFAULTS.ema_decay,
    whiten: Annotated[
        float,
        typer.Option(
            help="Replace the head by a map fitted on the training images at each evaluation: the pooled features whitened "
            "by their spread within the training classes, reduced to the embedding size; the value is the whitening's "
            "shrinkage (in mean eigenvalues), 0 keeps the trained head."
        ),
    ] = _DEFAULTS.whiten,
    image_size: Annotated[
        int | None, typer.Option("--image-size", help="Model input size (square) for training and evaluation (default: the data's).")
    ] = None,
    augment: Annotated[
        Augment, typer.Option(help="Training augmentation preset: none trains on the evaluation geometry, standard is Proxy-Anchor's.")
    ] = _DEFAULTS.augment,
    crop_scale: Annotated[
        str | None, typer.Option("--crop-scale", help="Random-resized-crop area range LOW,HIGH (overrides the preset), e.g. 0.5,1.")
    ] = None,
    hflip: Annotated[bool | None, typer.Option("--hflip/--no-hflip", help="Random horizontal flips (default: the preset's).")] = None,
    eval_fit: Annotated[
        EvalFit | None,
        typer.Option("--eval-fit", help=f"How evaluation and the exported model square an image (default: the data's, else {DEFAULT_FIT})."),
    ] = None,
    resize: Annotated[int | None, typer.Option(help="With --eval-fit center_crop: resize the shorter side to this before cropping.")] = None,
    decode: Annotated[
        Decode,
        typer.Option(help="JPEG decoding for evaluation, export and the runtime: reduced lets the decoder scale big photos down."),
    ] = _DEFAULTS.decode,
    eval_every: Annotated[int, typer.Option("--eval-every", help="Evaluate every N epochs.")] = _DEFAULTS.eval_every,
    eval_untrained: Annotated[
        bool, typer.Option("--eval-untrained/--no-eval-untrained", help="Also evaluate the untrained network first (epoch 0 of metrics.jsonl).")
    ] = _DEFAULTS.eval_untrained,
    nmi: Annotated[
        NmiMode, typer.Option(help=f"NMI in evaluation: auto (only up to {NMI_AUTO_MAX_ITEMS:,} images: k-means costs more above), always or never.")
    ] = _DEFAULTS.nmi,
    select_metric: Annotated[
        str,
        typer.Option("--select-metric", help="Metric that picks best.pt on the --val-fraction classes: recall@K, map@r, r_precision or nmi."),
    ] = _DEFAULTS.select_metric,
    val_fraction: Annotated[
        float,
        typer.Option("--val-fraction", help="Hold out this fraction of training classes to pick best.pt on (0: best.pt is the last epoch)."),
    ] = _DEFAULTS.val_fraction,
    seed: Annotated[int, typer.Option(help="Random seed.")] = _DEFAULTS.seed,
    device: Annotated[Device, typer.Option(help="auto, cpu or cuda.")] = _DEFAULTS.device,
    amp: Annotated[Amp, typer.Option(
        help="Mixed precision of the training steps (evaluation stays fp32): auto (CUDA: bf16 where native, else fp16; "
        "CPU: bf16 on Intel AMX, else none), bf16, fp16 (CUDA only) or none.")] = _DEFAULTS.amp,
    workers: Annotated[
        int | None, typer.Option(help="Data-loading worker processes (default: chosen for the device, see docs/benchmarks.md).")
    ] = None,
    cache: Annotated[
        CacheMode,
        typer.Option(help="Decoded-image cache: auto (RAM if it fits, else a file), ram, disk (a file reused by later runs) or off."),
    ] = _DEFAULTS.cache,
    cache_dir: Annotated[
        str | None, typer.Option("--cache-dir", help="Folder of --cache disk files (default: $PROXYEMBED_CACHE or ~/.cache/proxyembed/images).")
    ] = None,
    cache_ram_gb: Annotated[
        float | None, typer.Option("--cache-ram-gb", help="RAM --cache auto may fill, in GiB (default: a quarter of the available memory).")
    ] = None,
    sync_bn: Annotated[
        bool | None, typer.Option("--sync-bn/--no-sync-bn", help="BatchNorm statistics over all torchrun processes (default: on on CUDA).")
    ] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out from its last.pt.")] = False,
    log: Annotated[
        list[str] | None,
        typer.Option("--log", help=f"Mirror the run into an experiment tracker: {', '.join(get_args(TrackerName))} (repeatable)."),
    ] = None,
    mlflow_uri: Annotated[
        str | None, typer.Option("--mlflow-uri", help="MLflow tracking server for --log mlflow (default: MLFLOW_TRACKING_URI).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the run's summary as JSON on stdout (progress goes to stderr).")] = False,
) -> None:
    """Train an embedding network with a proxy loss and evaluate it on unseen classes.

    Data-parallel on several GPUs or machines: launch with ``torchrun --nproc-per-node N -m proxyembed train ...``.
    """
    from proxyembed.extras import require_extras

    require_extras("proxyembed train", "train")
    from proxyembed.api import run_training
    from proxyembed.runtime.options import json_or_text, parse_key_values
    from proxyembed.runtime.progress import RichReporter
    from proxyembed.training.config import resolve_config
    from proxyembed.training.distributed import is_main_process
    from proxyembed.training.reporting import TrainingReporter

    overrides = config_overrides(ctx)
    overrides["loss_params"] = parse_key_values(loss_param or [], "--loss-param", example="alpha=32", convert=json_or_text, commas=False) or None
    cfg = resolve_config(overrides, recipe)
    with RichReporter(err_console if as_json else console) as shown:
        result = run_training(cfg, out, resume=resume, reporter=TrainingReporter(shown), log=log or [], mlflow_uri=mlflow_uri)
    if not is_main_process():
        return
    if as_json:
        summary = {"run_dir": str(result.run_dir), "initial": result.initial, "final": result.final}
        print_json({**summary, "best": result.best, "best_epoch": result.best_epoch})
        return
    r0, r1 = result.initial.get("recall@1"), result.final.get("recall@1")
    untrained = "" if r0 is None else f"{r0:.4f} (untrained) -> "
    console.print(
        f"[bold green]done[/]: Recall@1 on unseen classes {untrained}{r1:.4f} (final), "
        f"best {result.best.get('recall@1', float('nan')):.4f} at epoch {result.best_epoch}; run dir {result.run_dir}",
        highlight=False,
    )


@user_errors
def eval_command(
    run: Annotated[Path, typer.Argument(help="Run dir (uses best.pt) or a checkpoint file.")],
    data: Annotated[str | None, typer.Option(help="Evaluation data (default: the run's own --data and split).")] = None,
    eval_data: Annotated[str | None, typer.Option("--eval-data", help="Folder of evaluation classes.")] = None,
    last: Annotated[bool, typer.Option("--last", help="Evaluate last.pt instead of best.pt.")] = False,
    device: Annotated[Device, typer.Option(help="auto, cpu or cuda.")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON on stdout.")] = False,
) -> None:
    """Evaluate a trained run on held-out classes: Recall@K, MAP@R, R-Precision, NMI."""
    from proxyembed.extras import require_extras

    require_extras("proxyembed eval", "train")
    from rich.table import Table

    from proxyembed.api import evaluate

    result = evaluate(run, data=data, eval_data=eval_data, which="last" if last else "best", device=device)
    if as_json:
        print_json({"checkpoint": str(result.checkpoint), "epoch": result.epoch, "data": result.data_fingerprint, "metrics": result.metrics})
        return
    table = Table(title=f"{result.checkpoint} (epoch {result.epoch}) on {result.data_name}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in result.metrics.items():
        table.add_row(k, f"{v:.4f}")
    console.print(table)


@user_errors
def data_command(
    target: Annotated[
        str, typer.Argument(help="Folder to write the built-in data to; with --to-shards, the folder, list or --data value to read.")
    ],
    spec: Annotated[
        str, typer.Option("--data", help="Which built-in data: 'synthetic[:seed=N,train_classes=N,eval_classes=N,per_class=N,size=PX]'.")
    ] = "synthetic",
    to_shards: Annotated[
        Path | None, typer.Option("--to-shards", help="Write TARGET's training and evaluation images as WebDataset tar shards here.")
    ] = None,
    shard_size: Annotated[int, typer.Option("--shard-size", min=1, help="Images per shard (with --to-shards).")] = 1000,
    force: Annotated[bool, typer.Option("--force", help="Write into (or replace) an existing non-empty folder.")] = False,
) -> None:
    """Write the built-in synthetic dataset as image folders, or (--to-shards) a dataset as tar shards with a manifest."""
    from proxyembed.data.resolve import resolve_data
    from proxyembed.runtime.errors import BadInput

    out = Path(target) if to_shards is None else to_shards
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not force)):
        raise BadInput(f"'{out}' exists and is not an empty folder", hint="choose another folder or pass --force")
    if to_shards is not None:
        from proxyembed.data.shards import write_shards
        from proxyembed.runtime.progress import progress_bar

        split = resolve_data(target)
        for w in split.warnings:
            err_console.print(f"[yellow]warning:[/] {w}", highlight=False)
        with progress_bar("writing shards", len(split.train) + len(split.eval), console=err_console) as advance:
            manifest = write_shards(split, to_shards, shard_size, advance=advance)
        parts = manifest["splits"]
        console.print(
            f"wrote {parts['train']['images']} training and {parts['eval']['images']} evaluation images in "
            f"{len(parts['train']['shards'])} + {len(parts['eval']['shards'])} shards to {to_shards} "
            f"(train with --data '{to_shards}/train-{{000000..{len(parts['train']['shards']) - 1:06d}}}.tar')",
            highlight=False, markup=False,
        )
        return
    from proxyembed.data.write_folders import write_split

    if not (spec == "synthetic" or spec.startswith("synthetic:")):
        raise BadInput(f"--data '{spec}': only the built-in synthetic data can be written", hint="use 'synthetic' or 'synthetic:seed=N'")
    n = write_split(resolve_data(spec), out)
    console.print(f"wrote {n} images to {out}/train and {out}/eval", highlight=False)


# Every option of `train` is named after the TrainConfig field it sets, except these, which steer the command
# (or, like --loss-param, are parsed into a field of another name). TrainConfig refuses any other name.
COMMAND_OPTIONS = frozenset({"out", "recipe", "loss_param", "resume", "log", "mlflow_uri", "as_json"})
# Fields whose command-line form is not their config form: --crop-scale LOW,HIGH.
_FROM_OPTION: dict[str, Callable[[Any], Any]] = {"crop_scale": lambda text: text.split(",")}


def config_overrides(ctx: typer.Context) -> dict[str, Any]:
    """The TrainConfig fields typed on the command line, by field name, in their config form.

    An option not typed is left out, so a recipe's setting (or the loss's own default) is kept: the
    defaults the options show in ``--help`` are TrainConfig's own, and a value equal to one of them but
    typed still wins over the recipe. Built from the parsed parameters, so a new field needs only its
    option in :func:`train_command`.
    """
    overrides = {}
    for name in given_options(ctx) - COMMAND_OPTIONS:
        convert = _FROM_OPTION.get(name)
        overrides[name] = ctx.params[name] if convert is None else convert(ctx.params[name])
    return overrides


def register(app: typer.Typer) -> None:
    """Add the training stage's commands to the main app."""
    app.command("train", rich_help_panel=PANEL)(train_command)
    app.command("eval", rich_help_panel=PANEL)(eval_command)
    app.command("data", rich_help_panel=PANEL)(data_command)
