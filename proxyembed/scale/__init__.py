"""Scale-out: embedding corpora too large for one machine on an existing distributed engine (Ray Data).

:func:`embed_ray` is ``proxyembed embed --engine ray``: the same images, preprocessing and model as the
single-process command, spread over a Ray cluster's CPUs, written as fixed-size shards that a rerun
skips once finished. Ray is imported only inside the functions that need it (the ``ray`` extra), so
importing this package costs nothing on an install without it.
"""

from __future__ import annotations

from .plan import Shard, plan_shards, size_actors
from .ray_embed import RayEmbedReport, ShardEncoder, embed_ray

__all__ = ["RayEmbedReport", "Shard", "ShardEncoder", "embed_ray", "plan_shards", "size_actors"]
