"""What it takes to rebuild the embedding network (weights come separately), torch-free.

The training config types its ``pool`` option with :data:`Pooling` and checkpoints store
:class:`ModelConfig`, both without importing torch; :mod:`.embedder` builds the network from it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

Pooling = Literal["avg", "max", "avg+max"]
"""How CNN feature maps are pooled; avg+max is Proxy-Anchor's official choice."""


@dataclass(frozen=True)
class ModelConfig:
    """What it takes to rebuild the network from a checkpoint (weights come separately)."""

    backbone: str = "resnet18"
    embedding_dim: int = 128
    pool: Pooling = "avg+max"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
