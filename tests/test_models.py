"""The embedding network: output contract, pooling variants, token backbones and local weights files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from proxyembed.models import ModelConfig, build_embedder
from proxyembed.runtime.errors import BadInput


@pytest.mark.parametrize("pool", ["avg", "max", "avg+max"])
def test_output_is_unit_norm_with_the_configured_dim(pool: str) -> None:
    torch.manual_seed(0)
    model = build_embedder(ModelConfig("resnet18", 24, pool)).eval()
    with torch.no_grad():
        out = model(torch.randn(3, 3, 32, 32))
    assert out.shape == (3, 24)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(3))


def test_pooling_changes_the_features() -> None:
    torch.manual_seed(0)
    model = build_embedder(ModelConfig("resnet18", 8, "avg")).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        f = model.backbone.forward_features(x)
        torch.testing.assert_close(model.features(x), f.mean(dim=(2, 3)))
        model.config = ModelConfig("resnet18", 8, "avg+max")
        torch.testing.assert_close(model.features(x), f.mean(dim=(2, 3)) + f.amax(dim=(2, 3)))


def test_token_backbones_use_their_own_pooling() -> None:
    model = build_embedder(ModelConfig("vit_tiny_patch16_224", 16)).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 224, 224))
    assert out.shape == (1, 16)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_local_pretrained_weights_are_loaded(tmp_path: Path, suffix: str) -> None:
    torch.manual_seed(1)
    source = build_embedder(ModelConfig("resnet18", 8)).backbone.state_dict()
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in source.items()}, str(path))
    else:
        torch.save({"state_dict": source}, path)
    torch.manual_seed(2)
    loaded = build_embedder(ModelConfig("resnet18", 8), pretrained=str(path)).backbone.state_dict()
    for key, value in source.items():
        torch.testing.assert_close(loaded[key], value)


def test_partially_matching_weights_warn(tmp_path: Path) -> None:
    state = build_embedder(ModelConfig("resnet18", 8)).backbone.state_dict()
    partial = {k: v for k, v in state.items() if not k.startswith("layer4")}
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.warns(UserWarning, match="keep random init"):
        build_embedder(ModelConfig("resnet18", 8), pretrained=str(tmp_path / "partial.pth"))


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "does not exist"),
        (b"garbage", "cannot read weights"),
        ({"fc.unrelated": torch.zeros(2)}, "no tensor"),
    ],
)
def test_bad_weights_files(tmp_path: Path, content: object, message: str) -> None:
    path = tmp_path / "w.pth"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    with pytest.raises(BadInput, match=message):
        build_embedder(ModelConfig("resnet18", 8), pretrained=str(path))


def test_unknown_backbone_suggests_names() -> None:
    with pytest.raises(BadInput, match="unknown backbone 'resnet_nope'"):
        build_embedder(ModelConfig("resnet_nope", 8))


def test_hub_failure_falls_back_to_random_init(monkeypatch: pytest.MonkeyPatch) -> None:
    import timm

    real = timm.create_model

    def offline(name: str, pretrained: bool = False, **kw):
        if pretrained:
            raise OSError("no network")
        return real(name, pretrained=False, **kw)

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.warns(UserWarning, match="random init"):
        model = build_embedder(ModelConfig("resnet18", 8), pretrained="hub")
    assert model.head.out_features == 8
