"""open_dataset: the one reader of a prepared dataset folder, on a real prepared lm dataset."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from llmkit.data.dataset import open_dataset
from llmkit.errors import UserError
from llmkit.registry import Registry


def test_an_opened_dataset_gives_its_records_shards_tokenizer_and_counts(lm_workspace: Path):
    registry = Registry.for_workspace(lm_workspace)
    ds = open_dataset(registry, "tiny")
    rec = registry.get("tiny", "dataset")
    assert (ds.id, ds.ref, ds.kind, ds.path) == (rec.id, rec.ref, "lm", Path(rec.path))
    lines = [json.loads(x) for x in (ds.path / "records" / "train.jsonl").read_text().splitlines() if x.strip()]
    assert ds.records("train") == lines and lines and ds.records("no-such-split") == []
    counts = ds.split_counts()
    assert counts["train"] == len(lines) and counts["val"] == len(ds.records("val")) > 0
    tokenizer = Tokenizer.from_file(str(ds.tokenizer_dir / "tokenizer.json"))
    assert ds.vocab_size == tokenizer.get_vocab_size(with_added_tokens=True)
    shard = ds.shard("train")
    assert shard.dtype == np.uint16 == ds.shard_dtype and len(shard) == ds.shard_file("train").stat().st_size // 2
    assert int(shard.max()) < ds.vocab_size
    # The shard is the train records' text in token ids: decoding the start gives the first record's start.
    assert tokenizer.decode(shard[:40].tolist()).replace(" ", "")[:20] in "".join(r["text"] for r in lines).replace(" ", "")


def test_a_damaged_or_unknown_dataset_is_a_clear_error(lm_workspace: Path, tmp_path: Path):
    registry = Registry.for_workspace(lm_workspace)
    with pytest.raises(UserError, match="no-such-data"):
        open_dataset(registry, "no-such-data")
    ds = open_dataset(registry, "tiny")
    broken = tmp_path / "copy"
    shutil.copytree(ds.path, broken)
    (broken / "manifest.json").unlink()
    ds.path, ds.manifest_data = broken, None
    with pytest.raises(UserError, match=r"manifest.json is missing; the folder is damaged"):
        _ = ds.vocab_size
    with pytest.raises(UserError, match="has no token shard for 'train'"):
        shutil.rmtree(broken / "shards")
        ds.manifest_data = {"tokenizer": {"vocab_size": 70}}
        ds.shard("train")


def test_a_trainer_evaluates_on_val_or_says_it_took_test(tmp_path):
    from llmkit.data.dataset import DatasetVersion
    from llmkit.train.finetune import eval_source

    folder = tmp_path / "ds"
    (folder / "records").mkdir(parents=True)
    (folder / "records" / "test.jsonl").write_text('{"text": "t"}\n')
    (folder / "records" / "val.jsonl").write_text("")
    ds = DatasetVersion("id", "d", 1, folder, "chat")
    assert ds.eval_records() == ("test", [{"text": "t"}])
    assert eval_source("test") == " (the test split: val is empty)"  # grpo called test figures "val reward" unsaid
    (folder / "records" / "val.jsonl").write_text('{"text": "v"}\n')
    assert ds.eval_records() == ("val", [{"text": "v"}]) and eval_source("val") == ""


def test_a_dataset_whose_files_were_deleted_by_hand_is_one_line_naming_them(lm_workspace: Path, tmp_path: Path):
    # a trainer met `FileNotFoundError: .../shards/train.bin`, exit 1
    registry = Registry.for_workspace(lm_workspace)
    copy = tmp_path / "datasets" / "cut"
    shutil.copytree(open_dataset(registry, "tiny").path, copy)
    rec = registry.add("dataset", "tiny-cut", kind="lm", path=copy)
    shutil.rmtree(copy / "shards")
    with pytest.raises(UserError) as err:
        open_dataset(registry, "tiny-cut")
    assert str(err.value) == (f"dataset tiny-cut:v1's folder {copy} is incomplete (shards/train.bin, shards/val.bin "
                              f"missing): prepare it again (a new version), or remove it with 'llmkit rm {rec.id}'")
    registry.remove(rec.id)
