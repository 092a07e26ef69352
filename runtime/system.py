"""Facts about the machine that results are reported beside (numbers mean little without them)."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo on Linux, else what the platform module knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def user_cache_dir() -> Path:
    """proxyembed's cache folder: ``$PROXYEMBED_CACHE``, else ``$XDG_CACHE_HOME/proxyembed``, else ``~/.cache/proxyembed``.

    Holds what is safe to delete and costly to remake: TensorRT provider engines, decoded training images.
    """
    if os.environ.get("PROXYEMBED_CACHE"):
        return Path(os.environ["PROXYEMBED_CACHE"])
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "proxyembed"


def available_memory() -> int | None:
    """Bytes of memory the kernel says a new allocation can get without swapping (MemAvailable), or None if unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None
