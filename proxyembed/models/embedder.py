"""The embedding network that training optimises and export serialises.

backbone (timm, by name) -> pooling (avg / max / avg+max as in Proxy-Anchor's official code) ->
linear head -> L2 normalisation. The L2 normalisation is part of the network, so every exported
artifact returns unit vectors and cosine similarity is a dot product everywhere downstream.

Training fits the head on the last stage's pooled features. The map after training
(:mod:`proxyembed.training.whitening`) can instead read every stage of a convolutional backbone from stride 4
on, each pooled the same way (:meth:`Embedder.stage_features`): it is then installed as ``map`` and takes the
head's place in ``forward``, so export and the runtime see one network either way.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from proxyembed.runtime.errors import BadInput

from .config import ModelConfig


class Embedder(nn.Module):
    """Images (N, 3, H, W) in, L2-normalised embeddings (N, D) out (the head's raw output on request)."""

    def __init__(self, config: ModelConfig, backbone: nn.Module) -> None:
        super().__init__()
        self.config = config
        self.backbone = backbone
        self.head = nn.Linear(backbone.num_features, config.embedding_dim)
        # Proxy-Anchor's official head: kaiming-normal weights, zero bias
        nn.init.kaiming_normal_(self.head.weight, mode="fan_out")
        nn.init.zeros_(self.head.bias)
        self.stages, widths = _earlier_stages(backbone)
        self.stage_width = backbone.num_features + sum(widths)  # the width of stage_features
        self.map: nn.Linear | None = None  # the map after training over stage_features, once installed

    def _pool(self, f: torch.Tensor) -> torch.Tensor:
        if self.config.pool == "avg":
            return f.mean(dim=(2, 3))
        if self.config.pool == "max":
            return f.amax(dim=(2, 3))
        return f.mean(dim=(2, 3)) + f.amax(dim=(2, 3))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features (N, C), before the head."""
        f = self.backbone.forward_features(x)
        if f.ndim == 4:  # convolutional feature map
            return self._pool(f)
        # token sequences (ViT and friends): the backbone's own pooling (class token or mean)
        return self.backbone.forward_head(f, pre_logits=True)

    def stage_features(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled output of every stage from stride 4 on, the last stage's being :meth:`features`, side by side
        (N, ``stage_width``); :meth:`features` alone for backbones without such stages (token sequences)."""
        if not self.stages:
            return self.features(x)
        final, earlier = self.backbone.forward_intermediates(x, indices=self.stages)
        return torch.cat([self._pool(f) for f in (*earlier, final)], dim=1)

    def forward(self, x: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """The embeddings; ``normalize=False`` returns them before the L2 normalisation."""
        z = self.head(self.features(x)) if self.map is None else self.map(self.stage_features(x))
        return F.normalize(z, dim=1) if normalize else z


def _earlier_stages(backbone: nn.Module) -> tuple[list[int], list[int]]:
    """Indices and widths of a timm backbone's feature stages at stride 4 or more and below its last stage's stride
    (resnet18: layer1 to layer3); none for backbones whose stages all share one stride (ViTs) or that list none."""
    info = getattr(backbone, "feature_info", None)
    if info is None or not hasattr(backbone, "forward_intermediates"):
        return [], []
    stages = list(info) if isinstance(info, list) else [info.info[i] for i in range(len(info.info))]
    strides = [int(f["reduction"]) for f in stages]
    keep = [i for i, r in enumerate(strides) if 4 <= r < strides[-1]]
    return keep, [int(stages[i]["num_chs"]) for i in keep]


def _create_backbone(name: str, pretrained: bool) -> nn.Module:
    import timm

    if not timm.list_models(name) and not timm.is_model(name):
        close = timm.list_models(f"*{name.split('.')[0][:6]}*")[:8]
        raise BadInput(f"unknown backbone '{name}'", hint=f"timm names such as {', '.join(close) or 'resnet50, vit_small_patch16_224'}")
    return timm.create_model(name, pretrained=pretrained, num_classes=0)


def load_weights_file(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a local ``.safetensors`` / ``.pth`` / ``.bin`` file, never unpickling code."""
    if not path.is_file():
        raise BadInput(f"--pretrained: weights file '{path}' does not exist", hint="pass 'hub', 'none' or a path to a .safetensors/.pth file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any failure to parse is the user's file, reported as such
        raise BadInput(f"--pretrained: cannot read weights from '{path}': {exc.__class__.__name__}: {exc}") from exc
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BadInput(f"--pretrained: '{path}' does not hold a state dict of tensors")
    return state


def build_embedder(config: ModelConfig, pretrained: str = "none") -> Embedder:
    """Build the network; ``pretrained`` is ``none``, ``hub`` (download via timm, random init if that
    fails, with a warning) or a path to a local weights file for the backbone."""
    if config.embedding_dim <= 0:
        raise BadInput(f"--embedding-dim must be positive, got {config.embedding_dim}")
    if pretrained == "hub":
        try:
            backbone = _create_backbone(config.backbone, pretrained=True)
        except BadInput:
            raise
        except Exception as exc:  # offline, hub outage, no weights for this name
            warnings.warn(f"pretrained weights for '{config.backbone}' unavailable ({exc.__class__.__name__}); using random init", stacklevel=2)
            backbone = _create_backbone(config.backbone, pretrained=False)
    else:
        backbone = _create_backbone(config.backbone, pretrained=False)
        if pretrained != "none":
            state = load_weights_file(Path(pretrained))
            own = backbone.state_dict()
            usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
            if not usable:
                raise BadInput(
                    f"--pretrained: no tensor in '{pretrained}' matches backbone '{config.backbone}'", hint="is it the right architecture?"
                )
            missing = len(own) - len(usable)
            if missing:
                warnings.warn(f"--pretrained: {missing} of {len(own)} backbone tensors not in '{pretrained}'; they keep random init", stacklevel=2)
            backbone.load_state_dict(usable, strict=False)
    return Embedder(config, backbone)
