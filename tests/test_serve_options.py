"""``proxyembed serve``'s options load without the serve extra: the command reads ServeOptions' defaults at start-up."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_serve_options_and_the_command_import_no_web_stack() -> None:
    code = """
        import sys
        import proxyembed.serve.options
        import proxyembed.cli
        heavy = sorted(m for m in ("fastapi", "starlette", "uvicorn", "prometheus_client", "pydantic") if m in sys.modules)
        print(",".join(heavy))
    """
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ""


def test_serve_help_works_without_fastapi() -> None:
    code = """
        import sys
        for name in ("fastapi", "uvicorn", "prometheus_client"):
            sys.modules[name] = None  # as without the serve extra
        from proxyembed.cli import main
        main(["serve", "--help"])
    """
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120, env=None)
    assert proc.returncode == 0, proc.stderr
    assert "--worker-threads" in proc.stdout and "--max-upload-mb" in proc.stdout
