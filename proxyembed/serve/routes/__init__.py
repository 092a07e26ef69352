"""The routers of ``proxyembed serve``, one per concern: :mod:`.page`, :mod:`.health`, :mod:`.search`, :mod:`.items`."""
