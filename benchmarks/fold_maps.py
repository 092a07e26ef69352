"""Training levers and post-training linear maps, scored on held-out training classes (docs/defaults.md, round 10).

``run`` trains proxyembed's defaults (plus ``--set KEY=JSON`` overrides) on one Caltech-101 fold exactly as
``reference_pml.py --tune ... --fold F`` does (the fold's fifth of the training classes held out with
``--val-fraction 0.2``, last epoch) and keeps the unwhitened network's pooled features (of every stage, and of
the last stage alone) and head outputs of the training, validation and unseen images, at one or more input
sizes; ``add-stages`` adds the every-stage features to runs made before they were kept (from their ``last.pt``).
``report`` then scores

- each training variant (a ``--tag``) under the default map, refitted from the run's stored features (not the
  metrics the run recorded, which are under the map its day's trainer fitted), paired by fold and seed with the
  ``base`` runs (the defaults);
- on the ``base`` runs, linear maps fitted on the training images against the default one (``--whiten``'s map of
  every stage's pooled features, round 17): the same map of the last stage alone (rounds 15 and 16), within-class
  whitening of the head output (the map of rounds 7 to 14), other
  shrinkages, LDA (whitening, then the leading directions of the whitened class means), whitening the pooled
  features (512-d) or reducing them to 128-d, and evaluating at larger input sizes than the network trained at.

Only the validation classes are scored; the unseen classes are kept in the files and never read here.

    python benchmarks/fold_maps.py run --out runs/base_f0_s0 --fold 0 --seed 0 --res 64,72,80
    python benchmarks/fold_maps.py run --out runs/ema_f0_s0 --fold 0 --seed 0 --set ema_decay=0.98
    python benchmarks/fold_maps.py add-stages runs
    python benchmarks/fold_maps.py report runs --name tune_round10
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine, machine_line, write_results  # noqa: E402
from reference_pml import PER_CLASS, VAL_FRACTION, caltech_subset, proxyembed_settings  # noqa: E402

from proxyembed.data import resolve_data  # noqa: E402
from proxyembed.models import build_embedder  # noqa: E402
from proxyembed.runtime.metrics import retrieval_metrics  # noqa: E402
from proxyembed.runtime.preprocess import PreprocessSpec  # noqa: E402
from proxyembed.training.checkpoint import load_checkpoint  # noqa: E402
from proxyembed.training.config import resolve_config  # noqa: E402
from proxyembed.training.loaders import hold_out_validation  # noqa: E402
from proxyembed.training.model_eval import input_batches  # noqa: E402
from proxyembed.training.trainer import train  # noqa: E402
from proxyembed.training.whitening import map_from_features, whitening_from_embeddings  # noqa: E402

RUN_NAME = re.compile(r"(?P<tag>.+)_f(?P<fold>\d+)_s(?P<seed>\d+)$")


# ---- run: train one fold and keep its embeddings -----------------------------------------------------------
def run(out: Path, fold: int, seed: int, size: int, sizes: list[int], overrides: dict[str, Any]) -> dict[str, Any]:
    """Train the defaults (plus ``overrides``) on ``fold`` and write ``emb.npz`` and ``result.json`` to ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    root = caltech_subset(out / "caltech101", PER_CLASS, fold=fold)
    settings = proxyembed_settings(str(root), size, "proxy_anchor", seed, epochs=8, batch=None, dim=128, backbone="resnet18", val=True)
    cfg = resolve_config({**settings, **overrides})
    t0 = time.perf_counter()
    result = train(cfg, out / "run")
    wall = time.perf_counter() - t0
    ckpt, model, parts = _trained(out / "run", cfg.data)
    arrays: dict[str, np.ndarray] = {f"{name}_y": np.array([s.label for s in samples]) for name, samples in parts.items()}
    for px in sizes:
        for name, samples in parts.items():
            arrays |= _embedded(model, samples, _spec(ckpt.preprocess, px), f"{name}_", f"_{px}")
    np.savez(out / "emb.npz", **arrays)
    record = {"fold": fold, "seed": seed, "size": size, "batch": cfg.batch_size, "overrides": overrides, "final": result.final, "wall_s": wall}
    (out / "result.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def _trained(run_dir: Path, data_spec: str) -> tuple[Any, Any, dict[str, Any]]:
    """A fold run's last checkpoint, its network with the unwhitened weights (the maps scored here replace the
    whitening), and its training, validation and unseen images."""
    ckpt = load_checkpoint(run_dir, prefer="last.pt")
    model = build_embedder(ckpt.model_config)
    model.load_state_dict(ckpt.data["model"])
    model.eval()
    data = resolve_data(data_spec)
    val = hold_out_validation(data, VAL_FRACTION)
    assert val is not None
    return ckpt, model, {"train": data.train, "val": val.eval, "unseen": data.eval}


def _spec(base: PreprocessSpec, px: int) -> PreprocessSpec:
    return PreprocessSpec(resize=round(px * 8 / 7), crop=px, fit=base.fit, mean=base.mean, std=base.std,
                          interpolation=base.interpolation, decode=base.decode)


def _embedded(model: Any, samples: Any, spec: PreprocessSpec, prefix: str, suffix: str) -> dict[str, np.ndarray]:
    """Every stage's pooled features, the last stage's (their last columns) and the head's output of ``samples``."""
    stages = []
    with torch.no_grad():
        for batch in input_batches(samples, spec, 128):
            stages.append(model.stage_features(torch.from_numpy(batch)).numpy())
    z = np.concatenate(stages)
    feat = z[:, -model.head.in_features :]
    with torch.no_grad():
        head = model.head(torch.from_numpy(feat)).numpy()
    return {f"{prefix}stages{suffix}": z, f"{prefix}feat{suffix}": feat, f"{prefix}head{suffix}": head}


def add_stages(folder: Path) -> None:
    """Add every stage's pooled features to the runs under ``folder`` that lack them, from each run's ``last.pt``;
    the last stage's stored features must come out the same, or the run is left alone (a different network)."""
    for d in sorted(p for p in folder.iterdir() if (p / "emb.npz").is_file() and RUN_NAME.match(p.name)):
        emb = dict(np.load(d / "emb.npz"))
        sizes = sorted({int(k.rsplit("_", 1)[1]) for k in emb if k.startswith("val_feat_")})
        if all(f"val_stages_{px}" in emb for px in sizes):
            continue
        ckpt, model, parts = _trained(d / "run", json.loads((d / "run" / "config.json").read_text())["data"])
        new: dict[str, np.ndarray] = {}
        for px in sizes:
            for name, samples in parts.items():
                got = _embedded(model, samples, _spec(ckpt.preprocess, px), f"{name}_", f"_{px}")
                if not np.allclose(got[f"{name}_feat_{px}"], emb[f"{name}_feat_{px}"], atol=1e-3, rtol=1e-3):
                    raise SystemExit(f"{d}: the last stage's features of {name} at {px} px differ from the stored ones; not the run's network")
                new[f"{name}_stages_{px}"] = got[f"{name}_stages_{px}"]
        tmp = d / "emb.tmp.npz"
        np.savez(tmp, **emb, **new)
        tmp.replace(d / "emb.npz")
        print(f"{d}: every stage's features added ({', '.join(f'{px} px' for px in sizes)})", flush=True)


# ---- report: score the variants -------------------------------------------------------------------------------
def _whitening(z: np.ndarray, y: np.ndarray, shrink: float) -> tuple[np.ndarray, np.ndarray]:
    """The trainer's own within-class whitening (mean, matrix) fitted to ``z``."""
    w = whitening_from_embeddings(z, y.tolist(), shrink)
    assert w is not None
    return w.mean.double().numpy(), w.matrix.double().numpy()


def _lda(z: np.ndarray, y: np.ndarray, shrink: float, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Whitening, then the ``k`` leading directions of the whitened class means (mean, (k, D) map)."""
    mean, a = _whitening(z, y, shrink)
    labels, keys = np.unique(y, return_inverse=True)
    centres = np.zeros((len(labels), z.shape[1]))
    np.add.at(centres, keys, z)
    centres = (centres / np.bincount(keys)[:, None] - mean) @ a.T
    eigval, eigvec = np.linalg.eigh(centres.T @ centres)
    return mean, eigvec[:, np.argsort(eigval)[::-1][:k]].T @ a


def _feature_map(z: np.ndarray, y: np.ndarray, shrink: float, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The trainer's own map from pooled features (``map_from_features``: whitening, every direction of the whitened
    class means, the rest filled by a seeded random projection) to ``k`` dimensions (mean, (k, D) matrix)."""
    w = map_from_features(z, y.tolist(), shrink, k)
    assert w is not None
    return w.mean.double().numpy(), w.matrix.double().numpy()


def _score(z: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    z = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
    m = retrieval_metrics(z.astype(np.float32), y, ks=(1,))
    return m["recall@1"], m["map@r"]


Map = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]  # (train z, train y) -> (mean, matrix)


def _maps() -> dict[str, tuple[str, Map | None]]:
    """Each map by name, with the embedding it applies to (``head`` output, pooled ``feat``ures of the last stage or
    of every ``stages``)."""
    out: dict[str, tuple[str, Map | None]] = {}
    for shrink in (1.0, 2.0, 4.0):
        out[f"every stage's pooled features, class-mean directions + random rest to 128-d (whitening {shrink:g})"] = (
            "stages", partial(_feature_map, shrink=shrink, k=128))
    for where, label in (("head", "head"), ("feat", "pooled features (512-d)")):
        out[f"{label}, no map"] = (where, None)
        for shrink in (1.0, 2.0, 4.0):
            out[f"{label}, within-class whitening {shrink:g}"] = (where, partial(_whitening, shrink=shrink))
        for k in (32, 64, 96, 128):
            out[f"{label}, LDA to {k}-d (whitening 2)"] = (where, partial(_lda, shrink=2.0, k=k))
    for shrink in (1.0, 2.0, 4.0):
        out[f"pooled features (512-d), class-mean directions + random rest to 128-d (whitening {shrink:g})"] = (
            "feat", partial(_feature_map, shrink=shrink, k=128))
    return out


MAPS = _maps()
DEFAULT_MAP = "every stage's pooled features, class-mean directions + random rest to 128-d (whitening 2)"  # what --whiten 2 does
LAST_STAGE_MAP = "pooled features (512-d), class-mean directions + random rest to 128-d (whitening 2)"  # rounds 15 and 16
HEAD_MAP = "head, within-class whitening 2"  # what --whiten 2 did until round 15
VARIANT_MAPS = (DEFAULT_MAP, LAST_STAGE_MAP, HEAD_MAP)  # scored on every training variant's runs too


def map_scores(emb: Any, px: int, names: tuple[str, ...] | None = None) -> dict[str, tuple[float, float]]:
    """Validation R@1 and MAP@R of the maps in MAPS (or those ``names``) at input size ``px``, each fitted on the
    training images."""
    out = {}
    for name in names or tuple(MAPS):
        where, fit = MAPS[name]
        train_z, val_z = emb[f"train_{where}_{px}"].astype(np.float64), emb[f"val_{where}_{px}"].astype(np.float64)
        if fit is not None:
            mean, matrix = fit(train_z, emb["train_y"])
            val_z = (val_z - mean) @ matrix.T
        out[name] = _score(val_z, emb["val_y"])
    return out


def _paired(rows: dict[str, dict[tuple[int, int], tuple[float, float]]], base: str) -> list[dict[str, Any]]:
    """Mean of each variant and its change against ``base`` over the (fold, seed) pairs both have."""
    table = []
    for name, runs in rows.items():
        pairs = sorted(set(runs) & set(rows[base]))
        if not pairs:
            continue
        d = np.array([np.subtract(runs[p], rows[base][p]) for p in pairs]) * 100
        v = np.array([runs[p] for p in pairs]) * 100
        se = d.std(0, ddof=1) / np.sqrt(len(pairs)) if len(pairs) > 1 else np.zeros(2)
        table.append({"variant": name, "runs": len(pairs), "pairs": [list(p) for p in pairs], "r1": v[:, 0].mean(), "map": v[:, 1].mean(),
                      "d_r1": d[:, 0].mean(), "se_r1": se[0], "d_map": d[:, 1].mean(), "se_map": se[1], "d_map_each": d[:, 1].round(2).tolist()})
    return table


def _lines(table: list[dict[str, Any]]) -> list[str]:
    lines = ["| variant | runs | val R@1 | val MAP@R | Δ R@1 (paired) | Δ MAP@R (paired) | Δ MAP@R of each run |",
             "| --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in table:
        each = " ".join(f"{x:+.1f}" for x in r["d_map_each"])
        lines.append(f"| {r['variant']} | {r['runs']} | {r['r1']:.1f} | {r['map']:.2f} | {r['d_r1']:+.1f} ± {r['se_r1']:.1f} "
                     f"| {r['d_map']:+.2f} ± {r['se_map']:.2f} | {each} |")
    return lines


def report(folder: Path, name: str, argv: list[str]) -> None:
    """Both tables of the module docstring from the runs under ``folder`` (one sub-folder per run)."""
    trained: dict[str, dict[tuple[int, int], tuple[float, float]]] = {}
    maps: dict[str, dict[tuple[int, int], tuple[float, float]]] = {}
    overrides: dict[str, Any] = {}
    base_batches: set[int] = set()
    for d in sorted(p for p in folder.iterdir() if (p / "result.json").is_file()):
        m = RUN_NAME.match(d.name)
        if not m:
            continue
        rec = json.loads((d / "result.json").read_text())
        key = (int(m["fold"]), int(m["seed"]))
        overrides[m["tag"]] = rec["overrides"]
        if m["tag"] == "base":
            # runs from before they recorded their batch pinned 64 unless their overrides set one
            base_batches.add(rec["batch"] if "batch" in rec else rec["overrides"].get("batch_size", 64))
        emb = np.load(d / "emb.npz")
        # a lever is scored under today's default map, refitted from the stored features, not by the metrics the
        # run recorded: those are under whatever map the trainer fitted when it ran, so runs of two rounds would mix maps
        if m["tag"] != "base":  # a training variant under the default map and under a reduction to 128-d
            scores = map_scores(emb, rec["size"], VARIANT_MAPS)
            trained.setdefault(m["tag"], {})[key] = scores[DEFAULT_MAP]
            for variant, score in scores.items():
                maps.setdefault(f"{m['tag']}: {variant}", {})[key] = score
            continue
        for px in sorted({int(k.rsplit("_", 1)[1]) for k in emb.files if k.startswith("val_head_")}):
            scores = map_scores(emb, px)
            suffix = "" if px == rec["size"] else f", evaluated at {px} px"
            if not suffix:
                trained.setdefault(m["tag"], {})[key] = scores[DEFAULT_MAP]
            for variant, score in scores.items():
                maps.setdefault(variant + suffix, {})[key] = score
    # the base runs may override the loss (the same folds for Proxy-NCA): every variant is paired with them
    labels = {t: f"{t} {json.dumps(o) if o else '(the defaults)'}" for t, o in overrides.items()}
    levers = _paired({labels[t]: v for t, v in trained.items()}, labels["base"])
    loss = (overrides.get("base") or {}).get("loss", "proxy_anchor")
    setting = "Proxy-Anchor" if loss == "proxy_anchor" else f"`{loss}` (every run here, the base included, sets the loss)"
    posthoc = _paired(maps, DEFAULT_MAP)
    command = "python benchmarks/" + Path(__file__).name + " " + " ".join(argv)
    md = ["# Training levers and linear maps after training, on held-out training classes", "", f"`{command}`", "",
          f"{setting}, resnet18 from scratch, 64 px, 8 epochs, batch {'/'.join(map(str, sorted(base_batches)))} "
          "(the base runs'), 128-d; each run validates on one fold (a fifth of "
          "Caltech-101's training classes) and trains on the rest; last epoch. Δ: against the defaults' run of the same fold and "
          "seed, mean ± standard error over the pairs, in points.", "",
          "## Training levers (every run under the default map, refitted from its stored features)", "", *_lines(levers), "",
          "## Maps fitted on the training images after training (on the defaults' runs, then on each variant's)", "", *_lines(posthoc), "",
          f"Machine: {machine_line(machine())}; shared with other jobs.", ""]
    write_results(name, {"argv": argv, "levers": levers, "maps": posthoc}, "\n".join(md))


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="train one fold and keep its embeddings")
    r.add_argument("--out", type=Path, required=True, help="run folder, named TAG_fFOLD_sSEED for `report`")
    r.add_argument("--fold", type=int, required=True)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--size", type=int, default=64, help="training input size (px)")
    r.add_argument("--res", default="", help="comma-separated input sizes to keep embeddings at (default: --size)")
    r.add_argument("--set", action="append", default=[], help="KEY=JSON override of the training config")
    r.add_argument("--threads", type=int, default=1)
    a = sub.add_parser("add-stages", help="add every stage's pooled features to the runs under a folder made before they were kept")
    a.add_argument("folder", type=Path)
    a.add_argument("--threads", type=int, default=1)
    p = sub.add_parser("report", help="score every run under a folder")
    p.add_argument("folder", type=Path)
    p.add_argument("--name", default="fold_maps")
    args = ap.parse_args(argv)
    if args.cmd == "run":
        torch.set_num_threads(args.threads)
        overrides = {k: json.loads(v) for k, _, v in (s.partition("=") for s in args.set)}
        sizes = [int(x) for x in args.res.split(",")] if args.res else [args.size]
        record = run(args.out, args.fold, args.seed, args.size, sizes, overrides)
        print(json.dumps({k: record[k] for k in ("fold", "seed", "overrides", "wall_s")} | {"final": record["final"]}))
    elif args.cmd == "add-stages":
        torch.set_num_threads(args.threads)
        add_stages(args.folder)
    else:
        report(args.folder, args.name, argv)


if __name__ == "__main__":
    main(sys.argv[1:])
