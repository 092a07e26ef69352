"""``proxyembed embed``: embeddings of a whole image corpus to a file, streaming, resumable, shardable.

The file format and its guarantees are :mod:`proxyembed.runtime.embeddings`, the embedding loop
:func:`proxyembed.runtime.corpus.embed_to_file`; this module picks the model (a bundle through the
torch-free :class:`Encoder`, or a run dir's best checkpoint through
:func:`proxyembed.training.inference.checkpoint_model`) and reports.
``proxyembed index BUNDLE --from-embeddings PART...`` merges the parts into one gallery. ``--engine ray``
hands the corpus to :func:`proxyembed.scale.embed_ray` instead (a folder of shards, on a Ray cluster).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from proxyembed.runtime.encoder import PrecisionChoice
from proxyembed.runtime.evaluation import EncodeBatch
from proxyembed.runtime.preprocess import Preprocessor, PreprocessSpec
from proxyembed.scale.plan import DEFAULT_SHARD_SIZE

from ._common import err_console, print_json, stdout_to_stderr, user_errors

_MAX_LISTED = 20


def register(app: typer.Typer) -> None:
    """Add this stage's commands to the main app."""
    app.command("embed", rich_help_panel="Runtime")(embed_command)


@user_errors
def embed_command(
    source: Annotated[Path, typer.Argument(help="Bundle folder (torch-free) or run dir written by `proxyembed train`.")],
    images: Annotated[Path, typer.Argument(help="Folder of images (class subfolders give labels), or a CSV/TSV list: path[,id][,label].")],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Embeddings file to write (.npy, with FILE.json and FILE.items.jsonl); --engine ray: a folder.")
    ],
    shard: Annotated[str, typer.Option(help="Embed only slice i of n (0-based), e.g. 0/4 on the first of four machines.")] = "0/1",
    batch_size: Annotated[int, typer.Option(min=1, help="Images per inference batch.")] = 64,
    precision: Annotated[PrecisionChoice, typer.Option(help="Bundle artifact: auto picks the best validated one for this machine.")] = "auto",
    threads: Annotated[int | None, typer.Option(min=1, help="ONNX Runtime threads (default: all cores).")] = None,
    workers: Annotated[int | None, typer.Option(min=0, help="Image-decoding threads (default: up to 4).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Start again instead of resuming an existing --out.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON on stdout.")] = False,
    engine: Annotated[Literal["local", "ray"], typer.Option(help="local: this process; ray: a Ray cluster (the ray extra).")] = "local",
    address: Annotated[str | None, typer.Option(help="--engine ray: the cluster (auto: the one `ray start` began here; default: local).")] = None,
    concurrency: Annotated[int | None, typer.Option(help="--engine ray: encoder actors (default: as many as fit, one CPU left for reading).")] = None,
    threads_per_worker: Annotated[int, typer.Option(help="--engine ray: CPUs and ONNX Runtime threads per actor.")] = 1,
    shard_size: Annotated[int, typer.Option(help="--engine ray: images per shard file (a rerun skips finished shards).")] = DEFAULT_SHARD_SIZE,
) -> None:
    """Embed every image under IMAGES into --out: resumes where a killed run stopped; --shard or --engine ray splits the work."""
    from proxyembed.runtime import BadInput
    from proxyembed.runtime.corpus import embed_to_file
    from proxyembed.runtime.embeddings import parse_shard, shard_slice
    from proxyembed.runtime.images import list_images

    if engine == "ray":
        local_only = {"--shard": shard != "0/1", "--threads": threads is not None, "--workers": workers is not None, "--overwrite": overwrite}
        _refuse_options(local_only, "--engine ray", "Ray shards the corpus itself and sizes actors with --concurrency / --threads-per-worker")
        _embed_ray(source, images, out, address, concurrency, threads_per_worker, shard_size, batch_size, precision, as_json)
        return
    ray_only = {"--address": address is not None, "--concurrency": concurrency is not None, "--threads-per-worker": threads_per_worker != 1,
                "--shard-size": shard_size != DEFAULT_SHARD_SIZE}
    _refuse_options(ray_only, "the local engine", "add --engine ray")
    if out.suffix != ".npy":
        raise BadInput(f"--out {out} must end in .npy", hint="e.g. --out embeddings/part0.npy")
    part = parse_shard(shard)
    items = list_images(images)
    items = items[shard_slice(len(items), part)]
    encode, dim, spec, identity = _model(source, precision, threads)
    done = embed_to_file(encode, dim, Preprocessor(spec), items, out, source=identity, shard=part,
                         batch_size=batch_size, workers=workers, overwrite=overwrite, progress=True)
    resumed, skipped = done["resumed_from"], done["skipped"]
    summary = {"out": str(out), **done, "shard": shard, "source": identity}
    if as_json:
        print_json(summary)
        return
    note = f", resumed at row {resumed}" if resumed else ""
    err_console.print(f"embedded {len(items) - skipped} image(s) (shard {shard}, {skipped} unreadable{note}) → {out}", highlight=False)


def _refuse_options(given: dict[str, bool], engine: str, hint: str) -> None:
    named = [name for name, is_set in given.items() if is_set]
    if named:
        from proxyembed.runtime import BadInput

        raise BadInput(f"{', '.join(named)} do(es) not apply to {engine}", hint=hint)


def _embed_ray(
    source: Path, images: Path, out: Path, address: str | None, concurrency: int | None, threads_per_worker: int, shard_size: int,
    batch_size: int, precision: str, as_json: bool,
) -> None:
    """``--engine ray``: :func:`proxyembed.scale.embed_ray` with a progress bar, then the summary and every unreadable file."""
    from proxyembed.runtime import BadInput
    from proxyembed.runtime.manifest import MANIFEST_NAME
    from proxyembed.scale import embed_ray

    if not (source / MANIFEST_NAME).is_file():
        raise BadInput(f"--engine ray needs a bundle ({MANIFEST_NAME} in {source})", hint="export the run first: proxyembed export RUN --out DIR")
    with stdout_to_stderr(as_json):
        report = embed_ray(
            source, images, out, address=address, concurrency=concurrency, threads_per_worker=threads_per_worker, shard_size=shard_size,
            batch_size=batch_size, precision=precision, progress=True,  # type: ignore[arg-type]
        )
    if as_json:
        print_json(report.to_dict())
        return
    for item_id, why in report.unreadable[:_MAX_LISTED]:
        err_console.print(f"unreadable: {item_id}: {why}", highlight=False, markup=False)
    if len(report.unreadable) > _MAX_LISTED:
        err_console.print(f"... and {len(report.unreadable) - _MAX_LISTED} more unreadable (--json lists them all)", highlight=False)
    resumed = f", {report.shards_resumed} finished earlier" if report.shards_resumed else ""
    err_console.print(
        f"embedded {report.rows - len(report.unreadable)} image(s) into {report.shards} shard(s){resumed} "
        f"({len(report.unreadable)} unreadable; {report.actors} actor(s) x {report.threads_per_worker} thread(s)) → {out}",
        highlight=False,
    )


def _model(source: Path, precision: str, threads: int | None) -> tuple[EncodeBatch, int, PreprocessSpec, dict[str, Any]]:
    """The encoder, dim, preprocessing and identity of a bundle (torch-free :class:`Encoder`) or a run dir's best checkpoint."""
    from proxyembed.runtime import BadInput, Encoder
    from proxyembed.runtime.corpus import encoder_source
    from proxyembed.runtime.manifest import MANIFEST_NAME
    from proxyembed.training.run_dir import CONFIG_NAME

    if (source / MANIFEST_NAME).is_file():
        encoder = Encoder(source, precision=precision, threads=threads)  # type: ignore[arg-type]
        err_console.print(f"encoder: {encoder.describe()}", highlight=False)
        return encoder.encode_batch, encoder.dim, encoder.bundle.manifest.preprocess, encoder_source(encoder)
    if (source / CONFIG_NAME).is_file():
        from proxyembed.extras import require_extras

        require_extras("proxyembed embed RUN", "train")
        from proxyembed.training.inference import checkpoint_model

        model = checkpoint_model(source)
        return model.encode, model.dim, model.spec, model.source
    raise BadInput(f"{source} is neither a bundle ({MANIFEST_NAME}) nor a run dir ({CONFIG_NAME})", hint="give `proxyembed export` or `train` output")
