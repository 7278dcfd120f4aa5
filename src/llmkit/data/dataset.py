"""One way to open a prepared dataset: `open_dataset(registry, ref)`.

A prepared dataset is a folder (`llmkit data prepare` writes it): `manifest.json` (task, splits with
their counts, tokenizer facts), `records/{split}.jsonl` (the cleaned records), `shards/{split}.bin`
(token ids, lm datasets only) and `tokenizer/`. Every stage reads it through `DatasetVersion`, so the
layout is known here and nowhere else.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llmkit.data.shards import read_shard, shard_dtype
from llmkit.errors import UserError


@dataclass
class DatasetVersion:
    id: str
    name: str
    version: int
    path: Path
    kind: str                                # the task it was prepared for: lm | chat | classify | preference
    manifest_data: dict[str, Any] | None = None  # read from manifest.json when first needed
    existed: bool = False                    # prepare() found the same content already registered

    @property
    def ref(self) -> str:
        return f"{self.name}:v{self.version}"

    @property
    def manifest(self) -> dict[str, Any]:
        if self.manifest_data is None:
            file = self.path / "manifest.json"
            if not file.exists():
                raise UserError(f"dataset {self.ref}: {file} is missing; the folder is damaged (prepare it again)")
            self.manifest_data = json.loads(file.read_text())
        return self.manifest_data

    @property
    def tokenizer_dir(self) -> Path:
        return self.path / "tokenizer"

    @property
    def vocab_size(self) -> int:
        return int(self.manifest["tokenizer"]["vocab_size"])

    def records_file(self, split: str) -> Path:
        return self.path / "records" / f"{split}.jsonl"

    def records(self, split: str) -> list[dict[str, Any]]:
        """The split's records ([] when the split is empty or absent)."""
        file = self.records_file(split)
        if not file.exists():
            return []
        return [json.loads(line) for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]

    def eval_records(self) -> tuple[str, list[dict[str, Any]]]:
        """(split, records) a trainer evaluates on: val, or test when val is empty (a trainer says which)."""
        val = self.records("val")
        return ("val", val) if val else ("test", self.records("test"))

    def split_counts(self) -> dict[str, int]:
        """Records per split, from the manifest."""
        counts = self.manifest.get("splits") or {}
        return {s: (n.get("records", 0) if isinstance(n, dict) else int(n)) for s, n in counts.items()}

    def shard_file(self, split: str) -> Path:
        return self.path / "shards" / f"{split}.bin"

    def shard(self, split: str) -> np.memmap:
        """The split's token ids (lm datasets), memory-mapped."""
        file = self.shard_file(split)
        if not file.exists():
            raise UserError(f"dataset {self.ref} has no token shard for '{split}' (only lm datasets have shards)")
        return read_shard(file, self.vocab_size)

    @property
    def shard_dtype(self) -> np.dtype:
        return shard_dtype(self.vocab_size)


def open_dataset(registry, ref: str) -> DatasetVersion:
    """The dataset version `ref` names (NAME, NAME:vN or an id), from the registry."""
    rec = registry.get(ref, "dataset")
    if not rec.path or not (Path(rec.path) / "manifest.json").exists():
        raise UserError(registry.missing(rec))
    ds = from_record(rec)
    # Files deleted by hand behind the registry's back: said here, not as a FileNotFoundError deep in a trainer.
    needed = [ds.records_file("train")] + ([ds.tokenizer_dir, ds.shard_file("train"), ds.shard_file("val")]
                                           if ds.kind == "lm" else [])
    gone = [f for f in needed if not f.exists()]
    if gone:
        raise UserError(f"dataset {ds.ref}'s folder {ds.path} is incomplete ({', '.join(str(f.relative_to(ds.path)) for f in gone)} "
                        f"missing): prepare it again (a new version), or remove it with 'llmkit rm {ds.id}'")
    return ds


def from_record(rec) -> DatasetVersion:
    """The dataset version of a registry record."""
    return DatasetVersion(rec.id, rec.name, rec.version, Path(rec.path), rec.kind)
