"""The Python API: lazy names without torch, the README's notebook example run verbatim, Run on a run dir."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import proxyembed
from proxyembed.runtime.errors import BadInput

README = Path(__file__).resolve().parents[1] / "README.md"


def _python(code: str, cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def test_import_proxyembed_loads_no_torch_and_names_resolve_lazily(tmp_path: Path) -> None:
    proc = _python(
        """
        import sys
        import proxyembed
        assert "torch" not in sys.modules
        names = [proxyembed.Encoder, proxyembed.Index, proxyembed.Retriever, proxyembed.Bundle, proxyembed.Run,
                 proxyembed.TrainConfig, proxyembed.CheckReport, proxyembed.train, proxyembed.export, proxyembed.check]
        assert callable(proxyembed.export) and callable(proxyembed.check)
        import proxyembed.export.pipeline  # importing the subpackage keeps it callable
        assert callable(proxyembed.export)
        print("torch" in sys.modules, sorted(set(proxyembed.__all__) - set(dir(proxyembed))))
        """,
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[0] == "False []"  # every public name resolved, and still no torch


def test_torch_side_calls_name_the_extra_when_torch_is_missing(tmp_path: Path) -> None:
    proc = _python(
        """
        import sys
        sys.modules["torch"] = None
        import proxyembed
        for call in (lambda: proxyembed.train(epochs=1), lambda: proxyembed.export("run", "out")):
            try:
                call()
            except proxyembed.runtime.MissingDependency as exc:
                print(exc)
        """,
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        'proxyembed.train needs torch (pip install "proxyembed[train]")',
        'proxyembed.export needs torch (pip install "proxyembed[train,export]")',
    ]


def test_readme_notebook_example_runs(tmp_path: Path) -> None:
    block = re.search(r"<!-- api-example -->\n```python\n(.*?)```\n<!-- /api-example -->", README.read_text(), re.S)
    assert block, "README.md lost its api-example block"
    proc = _python(block.group(1), tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("1 ") and lines[0].endswith(" proxy_anchor")  # epoch 1 (the untrained network is not evaluated by default)
    assert lines[-1].startswith("check passed")
    assert (tmp_path / "bundles" / "notebook" / "manifest.json").is_file() and (tmp_path / "baseline.json").is_file()


def test_run_reads_history_and_rejects_what_is_not_a_run(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text('{"epochs": 2, "val_fraction": 0.2}')
    records = [{"epoch": 0, "val/recall@1": 0.1, "recall@1": 0.3}, {"epoch": 1, "loss": 2.0, "val/recall@1": 0.5, "recall@1": 0.4},
               {"epoch": 2, "loss": 1.0, "val/recall@1": 0.4, "recall@1": 0.6}]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    run = proxyembed.Run(run_dir)
    assert run.config.epochs == 2 and len(run.history) == 3
    assert run.best_metrics == {"val/recall@1": 0.5, "recall@1": 0.4, "epoch": 1}  # chosen on the held-out classes
    with pytest.raises(BadInput, match="is not a run dir"):
        proxyembed.Run(tmp_path)


def test_encoder_encode_accepts_mixed_inputs_with_threads_and_progress(tmp_path: Path) -> None:
    from helpers.bundles import make_tiny_bundle, pattern_image

    encoder = proxyembed.Encoder(make_tiny_bundle(tmp_path / "b", with_int8=False))
    pil = [pattern_image(c, i) for c in ("red", "green", "blue") for i in range(3)]
    path = tmp_path / "x.png"
    pil[4].save(path)
    mixed = [pil[0], np.asarray(pil[1]), path, *pil[3:]]
    seen: list[int] = []
    inline = encoder.encode(mixed, batch_size=4, workers=0)
    threaded = encoder.encode(iter(mixed), batch_size=4, workers=3, progress=seen.append)  # a generator streams too
    np.testing.assert_array_equal(inline, threaded)
    assert seen == [4, 4, 1] and inline.shape == (9, encoder.dim)
    np.testing.assert_allclose(inline[2], encoder.encode(pil[4])[0], atol=1e-6)  # the path decodes like the PIL image
    with pytest.raises(BadInput, match="must be uint8"):
        encoder.encode([np.zeros((8, 8, 3), np.float32)])


def test_evaluate_recomputes_a_checkpoint_on_its_own_data_and_refuses_an_unknown_which(tmp_path: Path) -> None:
    from helpers.checkpoints import make_checkpoint

    data = "synthetic:train_classes=4,eval_classes=6,per_class=6"
    ckpt = make_checkpoint(tmp_path / "run", data=data)
    result = proxyembed.evaluate(tmp_path / "run", device="cpu")
    assert result.checkpoint == ckpt and result.epoch == 1 and result.data_fingerprint["images"] > 0
    again = proxyembed.evaluate(ckpt, data=data, device="cpu")  # the file itself, the same data given explicitly
    assert again.metrics == result.metrics and again.data_fingerprint == result.data_fingerprint
    assert 0 <= result.metrics["recall@1"] <= 1
    with pytest.raises(BadInput, match="which='middle'"):
        proxyembed.evaluate(tmp_path / "run", which="middle")  # type: ignore[arg-type]
