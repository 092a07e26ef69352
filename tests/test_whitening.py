"""The map after training (within-class whitening of every stage's pooled features, reduced to the embedding size): the
fitted map, its install in the head's place, checkpoints that carry it (and the last-stage map and head whitening of
older ones), export parity."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers.checkpoints import make_checkpoint
from proxyembed.data import resolve_data
from proxyembed.models import ModelConfig, build_embedder
from proxyembed.runtime.errors import BadInput
from proxyembed.runtime.metrics import retrieval_metrics
from proxyembed.runtime.preprocess import Preprocessor
from proxyembed.training.checkpoint import load_checkpoint, save_checkpoint
from proxyembed.training.config import resolve_config
from proxyembed.training.model_eval import evaluate_model
from proxyembed.training.run_dir import BEST, LAST
from proxyembed.training.trainer import train
from proxyembed.training.whitening import FEATURES, HEAD, STAGES, Whitening, fold_whitening, map_from_features, whitening_from_embeddings

TINY = "synthetic:train_classes=12,eval_classes=10,per_class=8,size=40"


def _noisy_classes(rng: np.random.Generator, classes: int, per_class: int) -> tuple[np.ndarray, np.ndarray]:
    """Class identity in 8 small directions, plus large noise shared by every class in 8 others."""
    centres = np.zeros((classes, 16))
    centres[:, :8] = rng.normal(size=(classes, 8))
    labels = np.repeat(np.arange(classes), per_class)
    z = centres[labels] + np.concatenate([0.1 * rng.normal(size=(len(labels), 8)), 5 * rng.normal(size=(len(labels), 8))], axis=1)
    return z.astype(np.float32), labels


def test_whitening_shrinks_the_noise_directions_and_recovers_retrieval() -> None:
    rng = np.random.default_rng(0)
    z, y = _noisy_classes(rng, 20, 10)
    w = whitening_from_embeddings(z, y.tolist(), shrink=0.1)
    assert w is not None and w.images == 200
    torch.testing.assert_close(w.matrix, w.matrix.T)
    # Fitted on these classes, scored on unseen ones drawn the same way: the noise no longer drowns the identity.
    z_new, y_new = _noisy_classes(rng, 20, 10)
    whitened = (torch.from_numpy(z_new) - w.mean) @ w.matrix.T
    before = retrieval_metrics(F.normalize(torch.from_numpy(z_new), dim=1).numpy(), y_new)["recall@1"]
    after = retrieval_metrics(F.normalize(whitened, dim=1).numpy(), y_new)["recall@1"]
    assert before < 0.5 and after > before + 0.3, (before, after)


def test_whitened_within_class_spread_follows_the_shrinkage() -> None:
    rng = np.random.default_rng(1)
    z, y = _noisy_classes(rng, 10, 30)
    shrink = 0.5
    w = whitening_from_embeddings(z, y.tolist(), shrink)
    assert w is not None
    residual = z.astype(np.float64) - np.stack([z[y == c].mean(0) for c in y])
    cov = residual.T @ residual / (len(z) - 10)
    eig = np.clip(np.linalg.eigvalsh(cov), 0, None)
    whitened_eig = np.linalg.eigvalsh(w.matrix.double().numpy() @ cov @ w.matrix.double().numpy())
    np.testing.assert_allclose(np.sort(whitened_eig), np.sort(eig / (eig + shrink * eig.mean())), rtol=1e-4, atol=1e-6)


def test_nothing_to_fit_and_bad_shrinkage() -> None:
    z = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    assert whitening_from_embeddings(z, ["a", "b", "c", "d", "e"], 1.0) is None  # no class with two images
    assert whitening_from_embeddings(np.ones((4, 4), np.float32), ["a", "a", "b", "b"], 1.0) is None  # no spread at all
    with pytest.raises(ValueError):
        whitening_from_embeddings(z, ["a"] * 5, 0.0)


def test_the_map_keeps_the_class_mean_directions_and_fills_the_rest_at_random() -> None:
    rng = np.random.default_rng(2)
    z, y = _noisy_classes(rng, 5, 20)  # 16-d features, 5 classes: 4 class-mean directions, 4 more to fill an 8-d embedding
    w = map_from_features(z, y.tolist(), 1.0, 8)
    assert w is not None and w.on == FEATURES and tuple(w.matrix.shape) == (8, 16) and tuple(w.mean.shape) == (16,)
    white = whitening_from_embeddings(z, y.tolist(), 1.0)
    assert white is not None
    # matrix = P^T white with P orthonormal (16 x 8): the whitened space is projected, not stretched
    p = w.matrix.double() @ torch.linalg.inv(white.matrix.double())
    torch.testing.assert_close(p @ p.T, torch.eye(8, dtype=torch.float64), atol=1e-4, rtol=0)
    # the whitened class means lie in the kept directions: projecting loses none of their spread
    means = torch.from_numpy(np.stack([z[y == c].mean(0) for c in range(5)]).astype(np.float64))
    centred = (means - means.mean(0)) @ white.matrix.double().T
    torch.testing.assert_close((centred @ p.T).norm(), centred.norm(), rtol=1e-4, atol=0)
    again = map_from_features(z, y.tolist(), 1.0, 8)
    assert again is not None and torch.equal(again.matrix, w.matrix)  # a seeded fill: every run and rank fits the same map


def test_the_map_recovers_retrieval_on_unseen_classes_and_pads_a_wider_embedding() -> None:
    rng = np.random.default_rng(3)
    z, y = _noisy_classes(rng, 20, 10)
    w = map_from_features(z, y.tolist(), 0.1, 24)  # wider than the 16-d features: the last 8 rows stay zero
    assert w is not None and tuple(w.matrix.shape) == (24, 16) and not w.matrix[16:].any() and w.matrix[:16].abs().sum(1).min() > 0
    z_new, y_new = _noisy_classes(rng, 20, 10)
    mapped = (torch.from_numpy(z_new) - w.mean) @ w.matrix.T
    before = retrieval_metrics(F.normalize(torch.from_numpy(z_new), dim=1).numpy(), y_new)["recall@1"]
    after = retrieval_metrics(F.normalize(mapped, dim=1).numpy(), y_new)["recall@1"]
    assert before < 0.5 and after > before + 0.3, (before, after)
    assert map_from_features(z[:5], ["a", "b", "c", "d", "e"], 1.0, 8) is None  # no class with two images


def test_stage_features_pool_every_stage_from_stride_4() -> None:
    """resnet18: layer1 to layer4 (64 + 128 + 256 + 512), each pooled as the head's input is; ViTs: the last stage only."""
    torch.manual_seed(0)
    model = build_embedder(ModelConfig("resnet18", 16, "avg+max")).eval()
    x = torch.randn(2, 3, 64, 64)
    b = model.backbone
    with torch.no_grad():
        maps = [b.maxpool(b.act1(b.bn1(b.conv1(x))))]
        for layer in (b.layer1, b.layer2, b.layer3, b.layer4):
            maps.append(layer(maps[-1]))
        expected = torch.cat([f.mean(dim=(2, 3)) + f.amax(dim=(2, 3)) for f in maps[1:]], dim=1)
        got = model.stage_features(x)
    assert model.stage_width == 960 and got.shape == (2, 960)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(got[:, -512:], model.features(x))
    vit = build_embedder(ModelConfig("vit_tiny_patch16_224", 16)).eval()
    assert vit.stages == [] and vit.stage_width == 192


@pytest.mark.parametrize("on", [STAGES, FEATURES, HEAD])
def test_folded_map_equals_the_mapped_embedding(on: str) -> None:
    torch.manual_seed(0)
    model = build_embedder(ModelConfig("resnet18", 16, "avg+max")).eval()
    x = torch.randn(4, 3, 32, 32)
    width = {STAGES: 960, FEATURES: 512, HEAD: 16}[on]
    a = torch.randn(16, width) / width**0.5
    w = Whitening(torch.randn(width), a, 1.0, 10, on)
    with torch.no_grad():
        source = {STAGES: model.stage_features, FEATURES: model.features, HEAD: lambda x: model.head(model.features(x))}[on](x)
        expected = F.normalize((source - w.mean) @ w.matrix.T, dim=1)
        got = fold_whitening(model, w)(x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def _whitened_run(tmp_path: Path, **over: object) -> Path:
    cfg = dict(data=TINY, epochs=2, batch_size=32, image_size=32, resize=36, embedding_dim=32, channels_last=False, whiten=1.0)
    cfg.update(over)
    out = tmp_path / "run"
    train(resolve_config(cfg), out)
    return out


def test_a_whitened_run_saves_the_map_and_its_checkpoint_reproduces_the_metrics(tmp_path: Path) -> None:
    out = _whitened_run(tmp_path)
    best, last = load_checkpoint(out / BEST), load_checkpoint(out / LAST)
    for ckpt in (best, last):
        w = ckpt.data["whitening"]
        assert w["matrix"].shape == (32, 960) and w["mean"].shape == (960,) and w["on"] == STAGES  # resnet18's four stages
        assert w["shrink"] == 1.0 and w["images"] == 12 * 8
    # "model" keeps the trained weights (resume continues from them); build_model is what evaluation scored.
    model = best.build_model()
    assert model.map is not None and torch.equal(model.head.weight, best.data["model"]["head.weight"])
    metrics = evaluate_model(model, resolve_data(TINY), best.preprocess)
    history = {h["epoch"]: h for h in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())}
    assert metrics["recall@1"] == pytest.approx(history[best.data["epoch"]]["recall@1"], abs=1e-6)
    assert metrics["map@r"] == pytest.approx(history[best.data["epoch"]]["map@r"], abs=1e-6)


def test_whitening_changes_no_training_step_and_off_leaves_no_map(tmp_path: Path) -> None:
    plain = load_checkpoint(_whitened_run(tmp_path / "plain", whiten=0.0) / LAST)
    whitened = load_checkpoint(_whitened_run(tmp_path / "whitened") / LAST)
    assert "whitening" not in plain.data and "whitening" in whitened.data
    assert plain.build_model().map is None and torch.equal(plain.build_model().head.weight, plain.data["model"]["head.weight"])
    for name, tensor in plain.data["model"].items():  # the fit at each evaluation draws no random numbers
        assert torch.equal(tensor, whitened.data["model"][name]), name


@pytest.mark.parametrize(
    "damage", ["shape", "nan", "missing", "head-sized map on the features", "last-stage-sized map on the stages", "unknown kind", "not a dict"]
)
def test_a_damaged_map_is_refused(tmp_path: Path, damage: str) -> None:
    path = make_checkpoint(tmp_path / "run")
    data = torch.load(path, weights_only=True)
    good = {"mean": torch.zeros(960), "matrix": torch.zeros(32, 960), "shrink": 1.0, "images": 10, "on": STAGES}
    bad = {
        "shape": {**good, "matrix": torch.zeros(16, 960)},
        "nan": {**good, "mean": torch.full((960,), float("nan"))},
        "missing": {"mean": torch.zeros(960)},
        "head-sized map on the features": {**good, "mean": torch.zeros(32), "matrix": torch.eye(32)},
        "last-stage-sized map on the stages": {**good, "mean": torch.zeros(512), "matrix": torch.zeros(32, 512)},
        "unknown kind": {**good, "on": "pixels"},
        "not a dict": [torch.zeros(512)],
    }[damage]
    save_checkpoint(path, {**data, "whitening": bad})
    with pytest.raises(BadInput, match="damaged whitening"):
        load_checkpoint(path).build_model()


@pytest.mark.parametrize("on", [STAGES, FEATURES, HEAD])
def test_exported_onnx_embeds_like_the_mapped_checkpoint(tmp_path: Path, on: str) -> None:
    """Every kind: the default map on every stage, a checkpoint of rounds 15-16 (the last stage) and one from before
    round 15 (head whitening, no "on" key)."""
    pytest.importorskip("onnxruntime")
    from proxyembed.export.onnx_export import export_onnx
    from proxyembed.export.validate import served

    width = {STAGES: 960, FEATURES: 512, HEAD: 32}[on]
    a = torch.randn(32, width, generator=torch.Generator().manual_seed(0)) / width**0.5
    saved = {"mean": torch.randn(width), "matrix": a, "shrink": 1.0, "images": 10}
    path = make_checkpoint(tmp_path / "run", whitening=saved if on == HEAD else {**saved, "on": on})
    ckpt = load_checkpoint(path)
    model = ckpt.build_model()
    export_onnx(model, tmp_path / "m.onnx", crop=32, backbone="resnet18")
    x = Preprocessor(ckpt.preprocess)([s.source for s in resolve_data(TINY).eval[:6]])
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(served(tmp_path / "m.onnx")(x), expected, atol=1e-4)
