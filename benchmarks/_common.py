"""Shared bits of the benchmarks: the machine description printed beside every table, and result writing."""

from __future__ import annotations

import json
import os
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, NoReturn

from proxyembed.runtime.files import atomic_write_text
from proxyembed.runtime.system import cpu_name

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    """CPU model, core count, memory, Python and library versions: numbers mean little without them."""
    cpu = cpu_name()
    mem_gib = None
    try:
        mem_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        pass
    versions = {}
    for pkg in ("numpy", "hnswlib", "chroma-hnswlib", "onnxruntime", "pillow"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": mem_gib,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
    }


def machine_line(info: dict[str, Any]) -> str:
    vers = ", ".join(f"{k} {v}" for k, v in info["versions"].items() if v)
    return f"{info['cpu']}, {info['cores']} cores, {info['memory_gib']} GiB; Python {info['python']}; {vers}"


def rss_mib() -> float:
    """Resident memory of this process, from /proc (no psutil on edge devices)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def read_results(name: str, out: Path = RESULTS) -> dict[str, Any]:
    """An earlier run's results file ``NAME.json``, refused with one line (exit 2) when it is missing or damaged, so a
    combine or merge never starts on a file that is not there or not whole."""
    path = out / f"{name}.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        _bad_input(f"no results file {path}; run the benchmark with --name {name} first, or check the name")
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        _bad_input(f"{path} is not valid JSON ({exc}); rerun the benchmark that wrote it")
    if not isinstance(data, dict):
        _bad_input(f"{path} holds no results object; rerun the benchmark that wrote it")
    return data


def _bad_input(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def write_results(name: str, data: dict[str, Any], markdown: str, out: Path = RESULTS) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / f"{name}.json", out / f"{name}.md"
    atomic_write_text(json_path, json.dumps(data, indent=2) + "\n")  # an interrupted run never leaves half a file
    atomic_write_text(md_path, markdown)
    return json_path, md_path
