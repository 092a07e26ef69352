"""proxyembed: proxy-based image embeddings from training to the edge.

Importing this package is cheap and never imports torch: ``proxyembed.runtime`` must work on devices
without it (DESIGN.md). Training lives in submodules that import torch themselves.
"""

__version__ = "0.1.0"
