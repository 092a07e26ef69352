"""Embedding networks: a timm backbone, pooling, a linear head and L2 normalisation."""

from .embedder import Embedder, ModelConfig, build_embedder

__all__ = ["Embedder", "ModelConfig", "build_embedder"]
