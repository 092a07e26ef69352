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
    records.append({"epoch": 3, "loss": 0.9, "val/recall@1": 0.5, "recall@1": 0.3})
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert proxyembed.Run(run_dir).best_metrics["epoch"] == 3  # a tie goes to the later epoch, as the trainer saves it
    (run_dir / "config.json").write_text('{"epochs": 3}')  # no validation classes: the last evaluated epoch, never the test peak
    records = [{"epoch": 1, "loss": 2.0, "recall@1": 0.6}, {"epoch": 2, "loss": 1.0, "recall@1": 0.4}, {"epoch": 3, "loss": 0.9}]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert proxyembed.Run(run_dir).best_metrics == {"recall@1": 0.4, "epoch": 2}  # epoch 3 was not evaluated
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
    # the same number the plainest way: the checkpoint's network on its preprocessed evaluation images, brute force
    import torch

    from helpers.oracles import recall_at_1
    from proxyembed.data import resolve_data
    from proxyembed.runtime.preprocess import Preprocessor
    from proxyembed.training.checkpoint import load_checkpoint

    loaded, samples = load_checkpoint(ckpt), resolve_data(data).eval
    with torch.no_grad():
        emb = loaded.build_model().eval()(torch.from_numpy(Preprocessor(loaded.preprocess)([s.source for s in samples]))).numpy()
    assert result.metrics["recall@1"] == pytest.approx(recall_at_1(emb, [s.label for s in samples]), abs=1e-9)
    with pytest.raises(BadInput, match="which='middle'"):
        proxyembed.evaluate(tmp_path / "run", which="middle")  # type: ignore[arg-type]


def test_a_checkpoint_without_its_data_is_refused_by_evaluate_and_export_alike(tmp_path: Path) -> None:
    """One policy for "the data this checkpoint was trained on": none recorded is a one-line BadInput naming the
    checkpoint and --data, never a silent evaluation on synthetic images; given data is used as given."""
    from helpers.checkpoints import make_checkpoint

    ckpt = make_checkpoint(tmp_path / "run", config={"backbone": "resnet18"})
    with pytest.raises(BadInput, match="records no training data") as evaluated:
        proxyembed.evaluate(tmp_path / "run", device="cpu")
    with pytest.raises(BadInput, match="records no training data") as exported:
        proxyembed.export(tmp_path / "run", tmp_path / "bundle")
    assert evaluated.value.message == exported.value.message == f"checkpoint '{ckpt}' records no training data"
    assert "--data" in (exported.value.hint or "") and not (tmp_path / "bundle").exists()
    given = proxyembed.evaluate(tmp_path / "run", data="synthetic:train_classes=4,eval_classes=6,per_class=6", device="cpu")
    assert given.data_fingerprint["classes"] == 6


def test_every_pytorch_caller_encodes_through_one_function(tmp_path: Path) -> None:
    """Run.embed, `proxyembed embed RUN`'s model and training evaluation give the same L2-normalised vectors
    as torch_encode_batch on the checkpoint's network (they are that function)."""
    from helpers.checkpoints import make_checkpoint
    from proxyembed.data import Sample
    from proxyembed.runtime.preprocess import Preprocessor
    from proxyembed.training.inference import checkpoint_model, torch_encode_batch
    from proxyembed.training.model_eval import embed_samples

    make_checkpoint(tmp_path / "run", data="synthetic:train_classes=4,eval_classes=6,per_class=6")
    (tmp_path / "run" / "config.json").write_text("{}")  # marks a run dir for Run; embedding reads only best.pt
    model = checkpoint_model(tmp_path / "run")
    images = [np.full((40, 40, 3), v, np.uint8) for v in (0, 90, 200)]
    batch = Preprocessor(model.spec)(images)
    expected = torch_encode_batch(model.checkpoint.build_model())(batch)
    np.testing.assert_allclose(np.linalg.norm(expected, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(model.encode(batch), expected)
    np.testing.assert_allclose(proxyembed.Run(tmp_path / "run").embed(images), expected, atol=1e-6)
    samples = [Sample(source=img, label=0, key=str(i)) for i, img in enumerate(images)]
    np.testing.assert_allclose(embed_samples(model.checkpoint.build_model(), samples, model.spec), expected, atol=1e-6)
    assert model.source == {"checkpoint": str(model.checkpoint.path), "sha256": model.checkpoint.sha256()}
