"""The runtime works where torch is absent (docs/architecture.md): block it, then build, encode, index and search."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from helpers.bundles import make_tiny_bundle, write_class_images


def _run_without_torch(code: str, cwd: Path) -> subprocess.CompletedProcess:
    prelude = "import sys\nsys.modules['torch'] = None  # any 'import torch' now raises ImportError\n"
    return subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_runtime_library_runs_without_torch(tmp_path: Path) -> None:
    bundle = make_tiny_bundle(tmp_path / "bundle")
    write_class_images(tmp_path / "imgs", per_class=2)
    proc = _run_without_torch(
        f"""
        from pathlib import Path
        import proxyembed.runtime as rt
        enc = rt.Encoder({str(bundle)!r}, device="cpu")
        paths = sorted(Path({str(tmp_path / "imgs")!r}).rglob("*.png"))
        r = rt.Retriever(enc)
        r.add(paths, [p.name for p in paths], [{{"label": p.parent.name}} for p in paths])
        r.save({str(tmp_path / "gal")!r})
        hits = rt.Retriever.load({str(tmp_path / "gal")!r}).search(paths[0], k=2)
        assert hits[0].metadata["label"] == paths[0].parent.name, hits
        assert sys.modules.get("torch") is None
        print("ok", enc.precision)
        """,
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok int8"


def test_cli_index_and_search_run_without_torch(tmp_path: Path) -> None:
    bundle = make_tiny_bundle(tmp_path / "bundle", with_int8=False)
    write_class_images(tmp_path / "imgs", per_class=2)
    proc = _run_without_torch(
        f"""
        from proxyembed.cli import app
        for argv in (["index", {str(bundle)!r}, {str(tmp_path / "imgs")!r}, "--out", {str(tmp_path / "gal")!r}],
                     ["search", {str(tmp_path / "gal")!r}, {str(tmp_path / "imgs" / "red" / "red_0.png")!r}, "--json"]):
            try:
                app(argv)
            except SystemExit as exc:
                assert exc.code in (0, None), (argv[0], exc.code)
        """,
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert '"label": "red"' in proc.stdout
