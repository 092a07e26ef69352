"""proxyembed.runtime: the torch-free half of proxyembed, for apps and edge devices.

Depends on numpy, Pillow, onnxruntime and hnswlib only; never on torch.
"""

from .bundle import Bundle
from .encoder import Encoder
from .errors import BadInput, CheckFailed, IntegrityError, MissingDependency, ProxyEmbedError
from .index import Hit, Index
from .manifest import Artifact, Manifest
from .metrics import retrieval_metrics
from .preprocess import Preprocessor, PreprocessSpec, load_image
from .retriever import Retriever

__all__ = [
    "Artifact",
    "BadInput",
    "Bundle",
    "CheckFailed",
    "Encoder",
    "Hit",
    "Index",
    "IntegrityError",
    "Manifest",
    "MissingDependency",
    "PreprocessSpec",
    "Preprocessor",
    "ProxyEmbedError",
    "Retriever",
    "load_image",
    "retrieval_metrics",
]
