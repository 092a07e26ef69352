"""TensorBoard: event files in the run dir's ``tensorboard/`` folder, written with TensorBoard's own writer.

``tensorboard --logdir runs/`` then shows every run side by side. No server is involved, so nothing can be
unreachable; the package itself is the ``[tensorboard]`` extra. The config and the validation tables are
Markdown text summaries (the Text tab), the curves an image summary (the Images tab).
"""

from __future__ import annotations

import struct
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from proxyembed.runtime.errors import BadInput

LOG_FOLDER = "tensorboard"


def _require() -> None:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        raise BadInput("--log tensorboard: the tensorboard package is not installed", hint='pip install "proxyembed[tensorboard]"') from None


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """``rows`` as a Markdown table, columns in first-seen order (TensorBoard's Text tab renders it)."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


class TensorBoardTracker:
    """Scalars, images and text in ``RUN/tensorboard``; a resumed run appends to the same folder."""

    name = "tensorboard"

    def __init__(self) -> None:
        _require()
        self.writer: Any = None

    def start(self, run_dir: Path, params: Mapping[str, Any], previous: Mapping[str, Any] | None) -> dict[str, Any]:
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self.writer = EventFileWriter(str(Path(run_dir) / LOG_FOLDER))
        if previous is None:
            self._text("config", markdown_table([{"setting": k, "value": v} for k, v in params.items()]), 0)
        return {"logdir": LOG_FOLDER}

    def _event(self, step: int, *values: Any) -> None:
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary

        self.writer.add_event(Event(wall_time=time.time(), step=step, summary=Summary(value=list(values))))

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        from tensorboard.compat.proto.summary_pb2 import Summary

        self._event(step, *(Summary.Value(tag=k, simple_value=float(v)) for k, v in metrics.items()))

    def flush(self) -> None:
        self.writer.flush()

    def log_image(self, tag: str, path: Path, step: int) -> None:
        from tensorboard.compat.proto.summary_pb2 import Summary

        png = Path(path).read_bytes()
        width, height = struct.unpack(">II", png[16:24])  # the IHDR chunk of a PNG
        image = Summary.Image(height=height, width=width, colorspace=4, encoded_image_string=png)
        self._event(step, Summary.Value(tag=tag, image=image))

    def log_artifact(self, path: Path, folder: str) -> None:
        """TensorBoard keeps no files: the checkpoint is already beside the event files, in the run dir."""

    def _text(self, tag: str, text: str, step: int) -> None:
        from tensorboard.compat.proto import tensor_pb2, tensor_shape_pb2, types_pb2
        from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata

        meta = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name="text"))
        tensor = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, string_val=[text.encode()], tensor_shape=tensor_shape_pb2.TensorShapeProto())
        self._event(step, Summary.Value(tag=tag, metadata=meta, tensor=tensor))

    def log_table(self, name: str, rows: list[dict[str, Any]], step: int) -> None:
        self._text(name, markdown_table(rows), step)

    def log_tags(self, tags: Mapping[str, str]) -> None:
        for key, value in tags.items():
            self._text(key, value, 0)

    def close(self, status: Literal["finished", "failed"]) -> None:
        if self.writer is not None:
            self.writer.close()
