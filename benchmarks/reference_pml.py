"""proxyembed's default training beside the loop a user would write by hand, on the same split.

The reference is a plain pytorch-metric-learning + timm loop: images preloaded as tensors (resized to the
square), PML's ``ProxyAnchorLoss`` / ``ProxyNCALoss``, ``MPerClassSampler`` (m=4), AdamW (lr 1e-3, proxies
0.1), average pooling. It runs twice: as written first (no augmentation), and as a user writes it an hour
later, with the standard augmentation (training images preloaded at 1.25x the input size, then a per-sample
RandomResizedCrop of 25-100% of the area and a horizontal flip on every batch). The better of the two on
each metric is "the reference" the lead is measured against. proxyembed runs its defaults with the same
backbone, image size, epochs and embedding size. Each side keeps its own batch unless ``--batch`` pins both: the
loop 64 (as users write it and the issue's tables ran it), proxyembed its default (``TrainConfig.batch_size``).
All three are scored on the unseen classes with the same metric code (``proxyembed.runtime.metrics.retrieval_metrics``,
which proxyembed's evaluation calls too), after the last epoch (no model selection on any side).

    pip install -e ".[train,bench]"
    python benchmarks/reference_pml.py                        # Caltech-101 at 64 and 128 px + synthetic, 3 seeds
    python benchmarks/reference_pml.py --datasets caltech101 --sizes 64 --seeds 0 --epochs 2   # a quick look
    python benchmarks/reference_pml.py --sides reference_augmented ...   # one side only; --combine joins sides

``--tune KEY=VALUE,...`` instead runs proxyembed variants with ``--val-fraction 0.2`` and reports the
metrics on the held-out *training* classes only, which is how the defaults were chosen (docs/defaults.md):
the unseen classes never decide a default. ``--tune select_fraction=F`` (0 or, say, 0.2) measures choosing ``best.pt`` on
held-out training classes: see ``SELECT_KEY``. ``--tune reference[,augment=true,sampler=random,weight_decay=X]`` scores the
reference loop (or a variant of it, ``augment=true`` for the augmented one) on the same validation classes.

Results: benchmarks/results/reference_pml.{md,json} (tuning: reference_pml_tune.{md,json}).
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS, machine, machine_line, read_results, write_results  # noqa: E402

from proxyembed.data import resolve_data  # noqa: E402
from proxyembed.data.types import DataSplit, Sample, hold_out_classes  # noqa: E402
from proxyembed.models import build_embedder  # noqa: E402
from proxyembed.runtime.metrics import retrieval_metrics  # noqa: E402
from proxyembed.runtime.preprocess import IMAGENET_MEAN, IMAGENET_STD, load_image  # noqa: E402
from proxyembed.training.checkpoint import load_checkpoint  # noqa: E402
from proxyembed.training.config import resolve_config  # noqa: E402
from proxyembed.training.model_eval import embed_samples, evaluate_model  # noqa: E402
from proxyembed.training.trainer import train  # noqa: E402
from proxyembed.training.whitening import (  # noqa: E402
    PooledFeatures,
    fold_whitening,
    map_from_features,
    whitening_from_embeddings,
    whitening_images,
)

CALTECH = Path(__file__).resolve().parents[2] / "shared" / "data" / "caltech101"
REPORTED = ("recall@1", "map@r")
PER_CLASS = 60  # --per-class: Caltech-101's images a class, capped as its README suggests against uneven class sizes
VAL_FRACTION = 0.2  # --tune's --val-fraction: the share of the training classes that validates
FOLDS = round(1 / VAL_FRACTION)  # --fold: the training classes in as many parts as hold-outs cover them
SIDES = ("reference", "reference_augmented", "proxyembed")  # the plain loop, the augmented loop, proxyembed's defaults
SIDE_NAMES = {"reference": "plain", "reference_augmented": "augmented", "proxyembed": "proxyembed"}  # as the table heads them
REFERENCES = SIDES[:2]  # "the reference" is the better of these on each metric
REFERENCE_BATCH = 64  # the hand-written loop's batch when --batch does not pin both sides
PRELOAD = 1.25  # the augmented loop preloads its training images at this multiple of the input size ...
CROP_SCALE = (0.25, 1.0)  # ... and crops this share of their area (torchvision's ratio range, 3/4 to 4/3)
CROP_RATIO = (3 / 4, 4 / 3)
# --tune select_fraction=F (benchmark-only key): train on the training classes outside the validation fold, hold out the
# fraction F of them to choose best.pt (every epoch evaluated), and score best.pt on the fold; F = 0 holds nothing
# out and scores the last epoch, the pair that measures what choosing best.pt on held-out classes buys and costs.
SELECT_KEY = "select_fraction"


# ---- the hand-written reference ------------------------------------------------------------------------
def _tensors(samples: list[Sample], size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image resized to size x size, normalised, stacked: what a 60-line script preloads."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    xs = []
    for s in samples:
        img = load_image(s.source).resize((size, size), resample=2)  # bilinear
        xs.append((torch.from_numpy(np.asarray(img, np.float32) / 255.0).permute(2, 0, 1) - mean) / std)
    return torch.stack(xs), torch.tensor([s.label for s in samples])


def augment_batch(x: torch.Tensor, size: int) -> torch.Tensor:
    """The augmented loop's training transform on a batch of preloaded images: for each image on its own, a
    random-resized crop (``CROP_SCALE`` of the area, ``CROP_RATIO`` aspect, drawn as torchvision draws them)
    resized bilinearly to ``size`` x ``size``, then a horizontal flip with probability 1/2. Uses torch's global
    random state, which the loop seeds."""
    from torchvision.transforms import RandomResizedCrop

    out = []
    for img in x:
        top, left, h, w = RandomResizedCrop.get_params(img, list(CROP_SCALE), list(CROP_RATIO))
        crop = torch.nn.functional.interpolate(
            img[None, :, top : top + h, left : left + w], size=(size, size), mode="bilinear", align_corners=False, antialias=True
        )[0]
        out.append(crop.flip(-1) if torch.rand(()) < 0.5 else crop)
    return torch.stack(out)


def reference_run(
    split: DataSplit,
    size: int,
    loss: str,
    seed: int,
    epochs: int,
    batch: int,
    dim: int,
    backbone: str,
    knobs: dict[str, Any] | None = None,
    augment: bool = False,
) -> dict[str, Any]:
    """Train and evaluate the PML + timm loop; returns metrics, wall time and training images/s.

    ``augment`` preloads the training images at ``PRELOAD`` x ``size`` and trains on :func:`augment_batch`
    of every batch; evaluation is the same either way. ``knobs`` (tuning only, never in the comparison) move
    the reference one step towards proxyembed to find which difference matters: ``sampler=random``,
    ``weight_decay=...``.
    """
    knobs = knobs or {}
    import timm
    from pytorch_metric_learning import losses, samplers

    t_start = time.perf_counter()
    torch.manual_seed(seed)
    np.random.seed(seed)  # PML's MPerClassSampler shuffles with numpy's global random state
    x_train, y_train = _tensors(split.train, round(PRELOAD * size) if augment else size)
    classes = sorted(set(y_train.tolist()))
    y_train = torch.tensor([classes.index(int(y)) for y in y_train])
    model = timm.create_model(backbone, pretrained=False, num_classes=dim)
    loss_cls = {"proxy_anchor": losses.ProxyAnchorLoss, "proxy_nca": losses.ProxyNCALoss}[loss]
    loss_fn = loss_cls(num_classes=len(classes), embedding_size=dim)
    groups = [{"params": model.parameters(), "lr": 1e-3}, {"params": loss_fn.parameters(), "lr": 0.1}]
    opt = torch.optim.AdamW(groups, weight_decay=knobs.get("weight_decay", 0.01))
    sampler: Any = samplers.MPerClassSampler(y_train.tolist(), m=4, batch_size=batch, length_before_new_iter=len(y_train))
    if knobs.get("sampler") == "random":
        sampler = torch.utils.data.RandomSampler(range(len(y_train)), generator=torch.Generator().manual_seed(seed))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x_train, y_train), batch_size=batch, sampler=sampler, drop_last=True)
    seen, t_train = 0, 0.0
    for _ in range(epochs):
        model.train()
        t0 = time.perf_counter()
        for x, y in loader:
            out = loss_fn(model(augment_batch(x, size) if augment else x), y)
            opt.zero_grad()
            out.backward()
            opt.step()
            seen += len(x)
        t_train += time.perf_counter() - t0
    x_eval, y_eval = _tensors(split.eval, size)
    model.eval()
    with torch.no_grad():
        emb = torch.cat([torch.nn.functional.normalize(model(x_eval[i : i + 256]), dim=1) for i in range(0, len(x_eval), 256)])
    metrics = retrieval_metrics(emb.numpy(), y_eval.numpy(), ks=split.ks)
    return {"metrics": metrics, "wall_s": time.perf_counter() - t_start, "train_images_per_s": seen / t_train, "batch": batch}


def loop_batch(pinned: int | None) -> int:
    """The hand-written loop's batch: ``--batch`` when it pins both sides, else the loop's own (REFERENCE_BATCH)."""
    return REFERENCE_BATCH if pinned is None else pinned


# ---- proxyembed -------------------------------------------------------------------------------------------
def proxyembed_settings(
    data: str, size: int | None, loss: str, seed: int, epochs: int, batch: int | None, dim: int, backbone: str, val: bool
) -> dict[str, Any]:
    """The ``proxyembed train`` settings every proxyembed run of the benchmarks pins (the rest are the defaults, which
    ``resolve_config`` fills in as the CLI does, the loss's own included); ``batch`` None keeps the default batch;
    ``val`` holds out VAL_FRACTION of the classes."""
    settings: dict[str, Any] = dict(data=data, loss=loss, seed=seed, epochs=epochs, embedding_dim=dim, backbone=backbone, eval_every=epochs)
    if batch is not None:
        settings["batch_size"] = batch
    if size:
        settings["image_size"] = size
    if val:
        settings["val_fraction"] = VAL_FRACTION
    return settings


EARLIER_MAPS = {"head_map_metrics": "the head whitening of rounds 7-14", "last_stage_map_metrics": "the last-stage map of rounds 15-16"}


def earlier_map_metrics(run: Path, data: str) -> dict[str, dict[str, float]]:
    """The last epoch of ``run`` on the evaluation classes of ``data`` under the maps that came before today's
    (docs/defaults.md, rounds 15 and 17), each fitted on the same training images with the run's shrinkage:
    ``head_map_metrics``, within-class whitening of the head's output (rounds 7 to 14), and ``last_stage_map_metrics``,
    today's map fitted on the last stage's pooled features alone (rounds 15 and 16). Training does not depend on the
    map, so this pairs the maps on one network."""
    ckpt = load_checkpoint(run, prefer="last.pt")
    model = build_embedder(ckpt.model_config)
    model.load_state_dict(ckpt.data["model"])  # the trained weights, before any map
    split = resolve_data(data)
    fit_on = whitening_images(split.train)
    labels, shrink = [s.label for s in fit_on], float(ckpt.config["whiten"])
    feats = embed_samples(PooledFeatures(model), fit_on, ckpt.preprocess, normalize=False)[:, -model.head.in_features :]
    with torch.no_grad():
        heads = model.head(torch.from_numpy(feats)).numpy()
    head, last = whitening_from_embeddings(heads, labels, shrink), map_from_features(feats, labels, shrink, model.head.out_features)
    assert head is not None and last is not None
    return {
        "head_map_metrics": evaluate_model(fold_whitening(copy.deepcopy(model), head), split, ckpt.preprocess),
        "last_stage_map_metrics": evaluate_model(fold_whitening(model, last), split, ckpt.preprocess),
    }


def proxyembed_run(
    data: str, size: int | None, loss: str, seed: int, epochs: int, batch: int | None, dim: int, backbone: str, overrides: dict[str, Any], val: bool,
    chosen: bool = False, head_map: bool = False,
) -> dict[str, Any]:
    """``proxyembed train`` with its defaults (plus ``overrides``); metrics of the last epoch, or with ``chosen`` of
    the epoch ``best.pt`` holds (with its epoch, the last epoch's metrics and each epoch's R@1 and MAP@R beside them);
    ``head_map`` adds the last epoch under the maps of rounds 7 to 14 and 15 to 16 (:func:`earlier_map_metrics`)."""
    cfg = resolve_config({**proxyembed_settings(data, size, loss, seed, epochs, batch, dim, backbone, val), **overrides})
    extra: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        result = train(cfg, Path(tmp) / "run")
        wall = time.perf_counter() - t0
        history = [json.loads(x) for x in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
        if head_map:
            extra |= earlier_map_metrics(Path(tmp) / "run", data)
    ips = statistics.mean(h["images_per_s"] for h in history if h["epoch"] > 0)
    prefix = "val/" if val else ""

    def scored(reported: dict[str, float]) -> dict[str, float]:
        return {k[len(prefix) :]: v for k, v in reported.items() if k.startswith(prefix) and (val or not k.startswith("val/"))}

    out = {"metrics": scored(result.best if chosen else result.final), "wall_s": wall, "train_images_per_s": ips, "batch": cfg.batch_size, **extra}
    if chosen:  # with each epoch's reported metrics, to replay what another --select-metric would have chosen
        curve = [{k: h[k] for k in ("epoch", *REPORTED, *(f"val/{m}" for m in REPORTED)) if k in h} for h in history]
        out |= {"best_epoch": result.best_epoch, "last_metrics": scored(result.final), "history": curve}
    return out


def nested_list(split: DataSplit, work: Path) -> str:
    """The validation fold of ``split`` as the evaluation classes of a list file (``work``/nested.csv), the other
    training classes as its training classes: a run on it may hold out some of *those* to choose ``best.pt``
    (``--tune select_fraction=F``) and is still scored on classes it neither trained nor chose on. The unseen
    classes are left out."""
    import csv

    rest, held = hold_out_classes(split.train, VAL_FRACTION)
    path = work / "nested.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        rows = csv.writer(fh)
        rows.writerow(["path", "label", "split"])
        for part, samples in (("train", rest), ("eval", held)):
            rows.writerows([str(s.source), split.class_names[s.label], part] for s in samples)
    return str(path)


# ---- orchestration ------------------------------------------------------------------------------------
def caltech_subset(root: Path, per_class: int | None, classes: int | None = None, fold: int | None = None) -> Path:
    """Caltech-101 as one class-folder tree of symlinks, at most ``per_class`` images a class (the data's README
    suggests a cap against its uneven class sizes) and optionally the first ``classes`` of each half of the split.
    Sorted class names put the suggested train half first, so proxyembed's split-in-half is the suggested split.

    ``fold`` (0 to FOLDS - 1) renames the folders so that the fold-th fifth of the training classes sorts last,
    where ``--val-fraction 0.2`` takes its validation classes: the folds together validate on every training class
    once, instead of always on the same 10.
    """
    train, unseen = ((CALTECH / f"{part}_classes.txt").read_text().split()[:classes] for part in ("train", "eval"))
    names = {c: c for c in train + unseen}
    if fold is not None:
        if not 0 <= fold < FOLDS:
            raise SystemExit(f"--fold {fold}: must be 0 to {FOLDS - 1}")
        k = round(len(train) * VAL_FRACTION)  # as many classes as hold_out_classes takes
        held = train[fold * k : (fold + 1) * k]
        order = [c for c in train if c not in held] + held
        names = {c: f"t{i:03d}_{c}" for i, c in enumerate(order)} | {c: f"u_{c}" for c in unseen}
    for name, folder in names.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for img in sorted((CALTECH / "images" / name).glob("*.jpg"))[:per_class]:
            (root / folder / img.name).symlink_to(img)
    return root


def _data_spec(dataset: str, work: Path, per_class: int | None, fold: int | None = None) -> str:
    if dataset != "caltech101":
        return "synthetic"
    if per_class is None and fold is None:
        return str(CALTECH / "images")
    return str(caltech_subset(work / "caltech101", per_class, fold=fold))


def _command(argv: list[str]) -> str:
    """The command line that ran with ``argv``, quoted so it can be pasted into a shell (``--tune ''`` included)."""
    return shlex.join(["python", "benchmarks/reference_pml.py", *argv])


def _provenance(names: list[str], parts: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """The single-run results files behind a combine and the command of each: a run's own, or the lists a
    combined file already holds, so that a file combined again still names every run and says how it was made."""
    files: list[str] = []
    commands: list[str] = []
    for name, part in zip(names, parts, strict=True):
        files += part.get("parts", [name])
        if "commands" in part:
            commands += part["commands"]
        elif "argv" in part:
            commands.append(_command(part["argv"]))
    return files, commands


def _parse_overrides(text: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for part in filter(None, re.split(r",(?![^\[{]*[\]}])", text)):  # commas inside [..] / {..} are values
        key, _, value = part.partition("=")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Mean and spread over the seeds of one side; None for a side that did not run."""
    if not runs:
        return None
    out: dict[str, Any] = {}
    for key in REPORTED:
        vals = [r["metrics"][key] for r in runs]
        out[key] = {"mean": statistics.mean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0}
    out["wall_s"] = statistics.mean(r["wall_s"] for r in runs)
    out["train_images_per_s"] = statistics.mean(r["train_images_per_s"] for r in runs)
    return out


def _summarise(row: dict[str, Any]) -> None:
    """Each side's summary, and proxyembed's lead over the better reference loop on each metric (``lead``,
    naming that loop in ``better_reference``); no lead where proxyembed or both loops are missing."""
    for side in SIDES:
        row[side] = _summary(row["runs"][side])
    row["lead"], row["better_reference"] = {}, {}
    refs = [side for side in REFERENCES if row[side]]
    for key in REPORTED:
        if row["proxyembed"] and refs:
            best = max(refs, key=lambda side: row[side][key]["mean"])
            row["better_reference"][key] = best
            row["lead"][key] = row["proxyembed"][key]["mean"] - row[best][key]["mean"]


def batch_line(results: list[dict[str, Any]]) -> str:
    """Each side's batch as the table's header states it, e.g. "batch 64 (plain, augmented), 32 (proxyembed)"."""
    by_side = {side: sorted({run["batch"] for r in results for run in r["runs"].get(side) or []}) for side in SIDES}
    groups: dict[str, list[str]] = {}
    for side, batches in by_side.items():
        if batches:
            groups.setdefault("/".join(map(str, batches)), []).append(SIDE_NAMES[side])
    if len(groups) == 1:
        return f"batch {next(iter(groups))}"
    return "batch " + ", ".join(f"{b} ({', '.join(names)})" for b, names in groups.items())


def _seeds_cell(row: dict[str, Any]) -> str:
    """The seeds of a row, each side's own where the sides ran different seeds (a combine can pool one side's three
    seeds with another's one), e.g. "0, 1, 2 (proxyembed: 0)"."""
    def names(seeds: list[Any]) -> str:
        return ", ".join(map(str, seeds))

    own = {side: [run.get("seed", s) for run, s in zip(runs, row["seeds"], strict=False)] for side, runs in row["runs"].items() if runs}
    if len({tuple(seeds) for seeds in own.values()}) <= 1:
        return names(row["seeds"])
    return names(row["seeds"]) + " (" + "; ".join(f"{SIDE_NAMES[side]}: {names(seeds)}" for side, seeds in own.items() if seeds != row["seeds"]) + ")"


def _markdown(results: list[dict[str, Any]], args: argparse.Namespace, infos: list[dict[str, Any]], commands: list[str] | None = None) -> str:
    """The comparison table; ``infos``: the machine of each run's results file (combined runs may come from several)."""
    def cell(r: dict[str, Any], side: str, key: str) -> str:
        s = r[side]
        if s is None:
            return "–"
        return f"{100 * s[key]['mean']:.1f}" + (f" ± {100 * s[key]['std']:.1f}" if len(r["runs"][side]) > 1 else "")

    def lead(row: dict[str, Any], key: str) -> str:
        return f"{100 * row['lead'][key]:+.1f}" if key in row["lead"] else "–"

    lines = [
        "# proxyembed defaults vs a pytorch-metric-learning + timm loop, plain and augmented",
        "",
        *[f"`{c}`  " for c in commands or [_command(sys.argv[1:])]],
        "",
        f"{args.backbone} from scratch, {args.epochs} epochs, {batch_line(results)}, {args.dim}-d; Caltech-101 capped at "
        f"{args.per_class or 'all'} images a class; unseen classes, last epoch, mean ± std in percent over the seeds of each "
        "row. *plain*: the loop without augmentation; *augmented*: the same loop with RandomResizedCrop (25-100%) and flips "
        f"on images preloaded at {PRELOAD}x; *lead*: proxyembed minus the better of the two loops on that metric. Same split, "
        "same metric code; wall time (s, mean per run) includes data loading.",
        "",
        "| data | px | loss | seeds | plain R@1 | augmented R@1 | proxyembed R@1 | lead R@1 | plain MAP@R | augmented MAP@R "
        "| proxyembed MAP@R | lead MAP@R | plain s | augmented s | proxyembed s |",
        "| --- | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        accuracy = [" | ".join([*(cell(r, side, key) for side in SIDES), lead(r, key)]) for key in REPORTED]
        walls = " | ".join("–" if r[side] is None else f"{r[side]['wall_s']:.0f}" for side in SIDES)
        lines.append(f"| {r['dataset']} | {r['size'] or 'native'} | {r['loss']} | {_seeds_cell(r)} | {' | '.join(accuracy)} | {walls} |")
    machines = list(dict.fromkeys(machine_line(info) for info in infos))
    lines += ["", *(f"Machine: {m}  " for m in machines), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", nargs="+", default=["caltech101", "synthetic"], choices=["caltech101", "synthetic"])
    ap.add_argument("--sizes", nargs="+", type=int, default=[64, 128], help="image sizes for Caltech-101 (synthetic uses its native 64)")
    ap.add_argument("--losses", nargs="+", default=["proxy_anchor", "proxy_nca"], choices=["proxy_anchor", "proxy_nca"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument(
        "--batch", type=int, default=None, help=f"pin both sides' batch (default: the loop {REFERENCE_BATCH}, proxyembed its own default)"
    )
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--per-class", type=int, default=PER_CLASS, help="cap on Caltech-101 images per class (0: all)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (1 is faster on a busy machine)")
    ap.add_argument("--sides", nargs="+", default=list(SIDES), choices=SIDES, help="which of the three to run (--combine joins the rest)")
    ap.add_argument("--tune", action="append", default=[], help="proxyembed variant KEY=VALUE,... scored on held-out training classes")
    ap.add_argument(
        "--fold", type=int, default=None, help=f"with --tune: validate on the fold-th fifth of the training classes (0 to {FOLDS - 1}; default: last)"
    )
    ap.add_argument(
        "--head-map", action="store_true",
        help="also score each proxyembed run under the earlier maps (head whitening, rounds 7-14; the last stage's, 15-16), same weights",
    )
    ap.add_argument("--name", default=None, help="results file name (default reference_pml, or reference_pml_tune with --tune)")
    ap.add_argument(
        "--combine", nargs="+", default=None,
        help="merge earlier results files (names) into --name, e.g. runs split over processes; NAME:SIDE+SIDE takes only those sides of a file",
    )
    args = ap.parse_args(argv)
    if args.fold is not None and (not args.tune or args.datasets != ["caltech101"]):
        ap.error("--fold needs --tune and --datasets caltech101: it picks which Caltech-101 training classes validate")
    if args.combine:
        return _combine(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine()
    with tempfile.TemporaryDirectory() as work:
        data = {d: _data_spec(d, Path(work), args.per_class or None, args.fold) for d in args.datasets}
        if args.tune:
            return _tune(args, info, data, Path(work))
        _compare(args, info, data)


def _compare(args: argparse.Namespace, info: dict[str, Any], data: dict[str, str]) -> None:
    results = []
    md = ""
    for dataset in args.datasets:
        split = resolve_data(data[dataset])  # once per dataset: setdefault's argument re-scanned the folders every seed
        for size in args.sizes if dataset == "caltech101" else [None]:
            for loss in args.losses:
                runs: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
                row: dict[str, Any] = {"dataset": dataset, "size": size, "loss": loss, "seeds": list(args.seeds), "runs": runs}
                for seed in args.seeds:
                    for side in args.sides:
                        if side == "proxyembed":
                            run = proxyembed_run(
                                data[dataset], size, loss, seed, args.epochs, args.batch, args.dim, args.backbone, {}, val=False,
                                head_map=args.head_map,
                            )
                        else:
                            augment = side == "reference_augmented"
                            run = reference_run(
                                split, size or 64, loss, seed, args.epochs, loop_batch(args.batch), args.dim, args.backbone, augment=augment
                            )
                        runs[side].append({**run, "seed": seed})
                        print(f"{dataset} {size} {loss} seed {seed} {side}: R@1 {run['metrics']['recall@1']:.4f} "
                              f"MAP@R {run['metrics']['map@r']:.4f} ({run['wall_s']:.0f} s)", flush=True)
                        for key, label in EARLIER_MAPS.items():
                            if key in run:
                                print(f"  under {label}: R@1 {run[key]['recall@1']:.4f} MAP@R {run[key]['map@r']:.4f}", flush=True)
                _summarise(row)
                results.append(row)
                md = _markdown(results, args, [info])
                payload = {"machine": info, "args": vars(args), "argv": sys.argv[1:], "results": results}
                write_results(args.name or "reference_pml", payload, md)
    print(md)


def _combine_part(spec: str) -> tuple[str, dict[str, Any]]:
    """A results file named by a ``--combine`` entry, ``NAME`` or ``NAME:SIDE+SIDE``; the latter keeps only those
    sides, so a comparison can reuse one side of an older file (its reference loops, say) beside newer runs."""
    name, _, sides = spec.partition(":")
    part = read_results(name, RESULTS)
    if sides:
        keep = sides.split("+")
        if unknown := sorted(set(keep) - set(SIDES)):
            raise SystemExit(f"--combine {spec}: unknown side(s) {unknown}; choose from {list(SIDES)}")
        for row in part["results"]:
            row["runs"] = {side: runs for side, runs in row["runs"].items() if side in keep}
    return name, part


def _combine(args: argparse.Namespace) -> None:
    """One table from results written by several processes (each ran some sides, losses, datasets, sizes or seeds)."""
    names, parts = (list(x) for x in zip(*map(_combine_part, args.combine), strict=True))
    tuning = {"variant" in row for part in parts for row in part["results"]}
    if tuning == {True, False}:
        raise SystemExit(f"--combine: {args.combine} mix tuning results (--tune) with comparisons; combine each kind on its own")
    if tuning == {True}:
        return _combine_tune(args, names, parts)
    merged: dict[tuple[Any, ...], dict[str, dict[int, dict[str, Any]]]] = {}  # data, size, loss -> side -> seed -> run
    for part in parts:
        for row in part["results"]:
            key = (row["dataset"], row["size"], row["loss"])
            seeds = row.get("seeds", part["args"]["seeds"])  # runs from before they named their seed: in seed order
            into = merged.setdefault(key, {side: {} for side in SIDES})
            for side in SIDES:
                for i, run in enumerate(row["runs"].get(side, [])):
                    seed = run.get("seed", seeds[i])
                    if seed in into[side]:
                        raise SystemExit(f"--combine: seed {seed} of {key}, side {side}, appears in two results files")
                    into[side][seed] = {"batch": part["args"]["batch"], **run, "seed": seed}  # runs from before they named their batch
    results = []
    for (dataset, size, loss), sides in merged.items():
        seeds = sorted(set().union(*sides.values()))
        runs = {side: [by_seed[s] for s in sorted(by_seed)] for side, by_seed in sides.items()}
        row = {"dataset": dataset, "size": size, "loss": loss, "seeds": seeds, "runs": runs}
        _summarise(row)
        results.append(row)
    first = argparse.Namespace(**parts[0]["args"])
    files, commands = _provenance(names, parts)
    md = _markdown(results, first, [part["machine"] for part in parts], commands)
    payload = {"machine": parts[0]["machine"], "args": vars(first), "parts": files, "commands": commands, "results": results}
    write_results(args.name or "reference_pml", payload, md)
    print(md)


def _tune(args: argparse.Namespace, info: dict[str, Any], data: dict[str, str], work: Path) -> None:
    """proxyembed variants scored on held-out training classes (never the unseen ones)."""
    rows = []
    lines: list[str] = []
    val_splits = {}  # the reference's validation split per dataset, resolved once
    nested: dict[str, str] = {}  # select_fraction's list file per dataset
    for dataset in args.datasets:
        full = resolve_data(data[dataset])
        rest, held = hold_out_classes(full.train, VAL_FRACTION)
        val_splits[dataset] = DataSplit(name=f"{full.name} validation classes", train=rest, eval=held, ks=full.ks)
        if any(SELECT_KEY in _parse_overrides(v) for v in args.tune):
            nested[dataset] = nested_list(full, work)
    for variant in args.tune:
        overrides = _parse_overrides(variant)
        for dataset in args.datasets:
            for size in args.sizes if dataset == "caltech101" else [None]:
                for loss in args.losses:
                    runs = []
                    for seed in args.seeds:
                        if "reference" in overrides:
                            knobs = {k: v for k, v in overrides.items() if k not in ("reference", "augment")}
                            run = reference_run(
                                val_splits[dataset], size or 64, loss, seed, args.epochs, loop_batch(args.batch), args.dim,
                                args.backbone, knobs,
                                augment=overrides.get("augment") is True,
                            )
                        elif SELECT_KEY in overrides:  # nested: choose best.pt on part of the rest, score on the fold
                            fraction = overrides[SELECT_KEY]
                            settings = {k: v for k, v in overrides.items() if k != SELECT_KEY} | {"val_fraction": fraction}
                            if fraction:
                                settings["eval_every"] = 1
                            run = proxyembed_run(
                                nested[dataset], size, loss, seed, args.epochs, args.batch, args.dim, args.backbone, settings, val=False,
                                chosen=bool(fraction),
                            )
                        else:
                            run = proxyembed_run(
                                data[dataset], size, loss, seed, args.epochs, args.batch, args.dim, args.backbone, overrides, val=True
                            )
                        runs.append({**run, "seed": seed, "fold": args.fold})
                        print(f"[{variant}] {dataset} {size} {loss} seed {seed}: val R@1 {runs[-1]['metrics']['recall@1']:.4f} "
                              f"MAP@R {runs[-1]['metrics']['map@r']:.4f} ({runs[-1]['wall_s']:.0f} s)", flush=True)
                    rows.append({"variant": variant, "dataset": dataset, "size": size, "loss": loss, "runs": runs, **_summary(runs)})
        lines = [
            "# Choosing defaults on held-out training classes",
            "",
            f"`{_command(sys.argv[1:])}`",
            "",
            f"`--val-fraction {VAL_FRACTION}`: metrics on the {'last' if args.fold is None else f'fold-{args.fold}'} fifth of the *training* "
            f"classes, last epoch (`{SELECT_KEY}` above 0: the epoch best.pt holds); the unseen classes are not looked at.",
            "",
            "| variant | data | px | loss | val R@1 | val MAP@R | s |",
            "| --- | --- | ---: | --- | ---: | ---: | ---: |",
        ]
        for r in rows:
            lines.append(
                f"| `{r['variant']}` | {r['dataset']} | {r['size'] or 'native'} | {r['loss']} "
                f"| {100 * r['recall@1']['mean']:.1f} ± {100 * r['recall@1']['std']:.1f} "
                f"| {100 * r['map@r']['mean']:.1f} ± {100 * r['map@r']['std']:.1f} | {r['wall_s']:.0f} |"
            )
        lines += ["", f"Machine: {machine_line(info)}", ""]
        payload = {"machine": info, "args": vars(args), "argv": sys.argv[1:], "results": rows}
        write_results(args.name or "reference_pml_tune", payload, "\n".join(lines))
    print("\n".join(lines))


def _base_variant(variant: str) -> str:
    """The runs a tuning variant is paired with: the defaults (``''``), or for a variant run nested with ``select_fraction``
    (trained outside the fold, scored on it) the defaults run the same way, ``select_fraction=0``."""
    nested = SELECT_KEY in _parse_overrides(variant)
    return f"{SELECT_KEY}=0" if nested and variant != f"{SELECT_KEY}=0" else ""


def _combine_tune(args: argparse.Namespace, names: list[str], parts: list[dict[str, Any]]) -> None:
    """Tuning results of several processes (folds, seeds, variants) pooled per variant, each compared with the
    current defaults (the variant ``''``) on the same folds and seeds: the paired difference cancels most of
    what one fold's classes and one seed do to both."""
    pooled: dict[tuple[Any, ...], dict[tuple[Any, Any], dict[str, Any]]] = {}  # variant, data, size, loss -> (seed, fold) -> run
    for part in parts:
        seeds = part.get("args", {}).get("seeds") or []  # files from before runs named their seed: in --seeds order
        for row in part["results"]:
            key = (row["variant"], row["dataset"], row["size"], row["loss"])
            for i, run in enumerate(row["runs"]):
                run = {"seed": seeds[i] if i < len(seeds) else None, "fold": None, **run}
                if (run["seed"], run["fold"]) in pooled.setdefault(key, {}):
                    raise SystemExit(f"--combine: seed {run['seed']} fold {run['fold']} of {key} appears twice")
                pooled[key][(run["seed"], run["fold"])] = run

    def paired(runs: dict[tuple[Any, Any], dict[str, Any]], base: dict[tuple[Any, Any], dict[str, Any]], metric: str) -> str:
        diffs = [100 * (r["metrics"][metric] - base[at]["metrics"][metric]) for at, r in runs.items() if at in base]
        if len(diffs) < 2:
            return ""
        return f"{statistics.mean(diffs):+.1f} ± {statistics.stdev(diffs) / len(diffs) ** 0.5:.1f} ({len(diffs)})"

    files, commands = _provenance(names, parts)
    lines = [
        "# Choosing defaults on held-out training classes, pooled over folds and seeds",
        "",
        *[f"`{c}`  " for c in commands],
        "",
        f"Metrics on the validation fifth of the *training* classes (`--val-fraction {VAL_FRACTION}`, `--fold` picks which fifth), last epoch "
        f"(`{SELECT_KEY}` above 0: the epoch best.pt holds), "
        "mean over every fold and seed run; Δ: the paired difference from the current defaults (variant `''`; for a "
        f"`{SELECT_KEY}` variant, `{SELECT_KEY}=0`) on the same folds and seeds, mean ± standard error (pairs).",
        "",
        "| variant | data | px | loss | runs | val R@1 | val MAP@R | Δ R@1 | Δ MAP@R |",
        "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    # one block per data, size and loss, the defaults on its first line; variants in the order they came
    ordered = sorted(pooled.items(), key=lambda item: (item[0][1], str(item[0][2]), item[0][3], item[0][0] != ""))
    for (variant, dataset, size, loss), runs in ordered:
        base = pooled.get((_base_variant(variant), dataset, size, loss), {})
        r1, mr = (100 * statistics.mean(r["metrics"][m] for r in runs.values()) for m in REPORTED)
        lines.append(
            f"| {f'`{variant}`' if variant else 'the defaults'} | {dataset} | {size or 'native'} | {loss} | {len(runs)} | {r1:.1f} | {mr:.1f} "
            f"| {paired(runs, base, 'recall@1') if variant else ''} | {paired(runs, base, 'map@r') if variant else ''} |"
        )
    lines += ["", f"Machine: {machine_line(parts[0]['machine'])}", ""]
    rows = [{"variant": k[0], "dataset": k[1], "size": k[2], "loss": k[3], "runs": list(v.values())} for k, v in ordered]
    payload = {"machine": parts[0]["machine"], "parts": files, "commands": commands, "results": rows}
    write_results(args.name or "reference_pml_tune", payload, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()

