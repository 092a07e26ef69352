"""The loss table: each ``--loss`` name and the class that implements it, in a module that imports nothing.

Two sides read it: :mod:`proxyembed.training.config` (the ``--loss`` choices, torch-free) and
:mod:`proxyembed.losses` (its registry, with torch). It stands apart from both so neither imports the other
to get it: ``resolve_config`` reads each loss's training defaults from :mod:`proxyembed.losses`, and the losses
never import the config back.
"""

from __future__ import annotations

LOSS_CLASSES: dict[str, str] = {
    "proxy_anchor": "ProxyAnchorLoss",
    "proxy_nca": "ProxyNCALoss",
    "proxy_nca++": "ProxyNCAPlusPlusLoss",
    "nir": "NIRLoss",
    "triplet": "TripletLoss",
}
"""The loss registry: each ``--loss`` name and the class of :mod:`proxyembed.losses` that implements it.

Torch-free, so the CLI lists the losses without importing torch; ``proxyembed.losses.LOSSES`` is built
from it (and names each class after its entry), so a new loss is its module in ``losses/``, its class
imported in ``losses/__init__.py`` and one line here.
"""
