"""proxyembed.runtime: the torch-free half of proxyembed, for apps and edge devices.

Depends on numpy, Pillow, onnxruntime and hnswlib only; never on torch.
"""

from .errors import BadInput, CheckFailed, IntegrityError, MissingDependency, ProxyEmbedError
from .manifest import Artifact, Manifest
from .metrics import retrieval_metrics
from .preprocess import Preprocessor, PreprocessSpec, load_image

__all__ = [
    "Artifact",
    "BadInput",
    "CheckFailed",
    "IntegrityError",
    "Manifest",
    "MissingDependency",
    "PreprocessSpec",
    "Preprocessor",
    "ProxyEmbedError",
    "load_image",
    "retrieval_metrics",
]
