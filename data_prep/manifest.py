"""Layer manifests: what went in, what came out, how long it took — so a run can be audited."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from data_prep import schema as S


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def parquet_rows(path: Path) -> int:
    return int(pq.ParquetFile(path).metadata.num_rows)


@dataclass
class Manifest:
    """Collects a layer's inputs and outputs; :meth:`write` stores it as ``manifest.json`` in the layer."""

    layer: str
    started: float = field(default_factory=time.perf_counter)
    inputs: dict[str, str] = field(default_factory=dict)
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def add_input(self, path: Path) -> None:
        self.inputs[str(path)] = file_sha256(path)

    def add_output(self, path: Path) -> None:
        entry: dict[str, Any] = {"sha256": file_sha256(path)}
        if path.suffix == ".parquet":
            entry["rows"] = parquet_rows(path)
        self.outputs[path.name] = entry

    def write(self, layer_dir: Path) -> Path:
        doc = {
            "layer": self.layer,
            "schema_version": S.SCHEMA_VERSION,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "seconds": round(time.perf_counter() - self.started, 3),
            "inputs": self.inputs,
            "outputs": self.outputs,
            **self.extra,
        }
        path = layer_dir / S.MANIFEST_FILE
        path.write_text(json.dumps(doc, indent=2, default=str))
        return path


def read_manifest(layer_dir: Path) -> dict[str, Any]:
    return dict(json.loads((layer_dir / S.MANIFEST_FILE).read_text()))
