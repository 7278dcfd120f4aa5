"""`llmkit audit privacy` and `train pretrain --canaries` on real tiny models.

The 'leak' model is trained ~120 epochs on a small corpus: contact cards (e-mail addresses and phone numbers,
prepared with --pii keep) and strings of random letters, with canaries planted 20 times each. It must
leak: training PII in its samples, train windows continued verbatim while held-out ones are not, the
planted secrets ranked first. 'tiny-lm' (60 steps of Shakespeare, no canaries) must not be flagged.
"""

from __future__ import annotations

import json
import random
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from llmkit.audit.privacy import privacy_audit
from llmkit.config import PretrainConfig, PrivacyAuditConfig
from llmkit.data import canaries
from llmkit.data.shards import read_shard
from llmkit.errors import UserError
from llmkit.registry import Registry
from llmkit.workspace import Workspace
from tests.conftest import train_char_lm

SMALL = {"hidden_size": 96, "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 2,
         "intermediate_size": 192}
# Samples as long as the 48-token context allows (46 after the prompt): a card reaches its phone number
# about 40 characters in, so shorter samples rarely show one.
# 128 samples: with 64, a change of optimizer kernel alone (foreach to fused AdamW, same maths up to rounding)
# moved the count of training cards repeated from 3 to 1; with 128 the same two models give 10 and 6.
AUDIT = dict(data="leak", prefix_tokens=24, suffix_tokens=16, samples=128, sample_tokens=46, candidates=500)


def leaky_corpus(seed: int = 0) -> str:
    rng = random.Random(seed)
    first = ["anna", "boris", "chen", "dora", "emil", "fatima", "gus", "hana", "ivan", "jules", "kofi", "lena",
             "marco", "nia", "otto", "priya"]
    last = ["smith", "okafor", "li", "novak", "garcia", "berg", "rossi", "khan"]
    docs = []
    for i in range(16):
        f, surname = rng.choice(first), rng.choice(last)
        card = (f"{f.title()} {surname.title()} can be reached at {f}.{surname}{i}@example.com or on "
                f"+44 20 7{rng.randrange(100, 999)} {rng.randrange(1000, 9999)}.")
        docs += [card, card]
    letters = "abcdefghijklmnopqrstuvwxyz"
    docs += [" ".join("".join(rng.choice(letters) for _ in range(rng.randint(2, 7))) for _ in range(14)) for _ in range(30)]
    rng.shuffle(docs)
    return "\n\n".join(docs)


@pytest.fixture(scope="module")
def leaky(tmp_path_factory) -> Path:
    return train_char_lm(tmp_path_factory.mktemp("leaky-ws"), "leak", leaky_corpus(), SMALL,
                         data=dict(pii="keep", dedupe="none", splits={"val": 0.1, "test": 0.2}), max_steps=800,
                         context=48, lr=6e-3, canaries=4, canary_repeats=[20])


def test_canaries_are_planted_in_the_train_shard_and_saved_with_the_model(leaky: Path):
    registry = Registry.for_workspace(leaky)
    model = registry.get("leak", "model")
    planted = canaries.load(Path(model.path))
    assert [c.repeats for c in planted] == [20, 20, 20, 20, 0, 0, 0, 0]
    assert len({c.secret for c in planted}) == 8 and all(c.secret.isdigit() and len(c.secret) == 10 for c in planted)
    lineage = json.loads((Path(model.path) / "llmkit.json").read_text())
    run = Path(lineage["run"]["path"])
    assert lineage["canaries"] == {"planted": 4, "repeats": [20], "file": "canaries.json"}
    # The planted shard is the dataset's train shard plus 20 copies of each planted canary, each a document.
    dataset = registry.get("leak", "dataset")
    vocab = json.loads((Path(dataset.path) / "manifest.json").read_text())["tokenizer"]["vocab_size"]
    original = read_shard(Path(dataset.path) / "shards" / "train.bin", vocab)
    with_canaries = read_shard(run / "canaries" / "train.bin", vocab)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model.path)
    text = tokenizer.decode(np.asarray(with_canaries).tolist())
    for c in planted:
        assert text.count(c.text) == c.repeats
    extra = sum((len(tokenizer(c.text, add_special_tokens=False)["input_ids"]) + 2) * c.repeats for c in planted)
    assert len(with_canaries) == len(original) + extra


def test_a_leaky_model_is_flagged_on_every_probe(leaky: Path, tmp_path: Path):
    out = tmp_path / "privacy.html"
    report = privacy_audit("leak", PrivacyAuditConfig(**AUDIT, out=str(out)), Workspace.open(leaky),
                           Registry.for_workspace(leaky))
    assert report.flagged == ["pii", "memorization", "canaries"], report.reasons
    # Canaries planted 20 times rank first among 500 candidates; never-planted ones sit at random ranks.
    c = report.canaries
    assert all(r["rank"] == 1 and r["exposure"] == pytest.approx(np.log2(501), abs=1e-3) for r in c["planted"])
    fresh = [r["exposure"] for r in c["references"]]
    assert len(fresh) == 4 and np.mean(fresh) < 3 and max(fresh) < 6, fresh
    # Training text continues verbatim (measured 0.55 of windows), held-out text does not (0.0).
    mem = report.memorization
    assert mem["train"]["rate"] > 0.3 and mem["heldout"]["rate"] <= 0.05, mem
    assert mem["train"]["windows"] >= 30 and mem["examples"]
    # Sampled text repeats e-mail addresses and phone numbers of the training cards.
    pii = report.pii
    assert pii["generations"] == 128 and pii["in_training"] >= 2 and set(pii["by_type"]) <= {"EMAIL", "PHONE"}
    assert any(e["in_training"] and e["text"] in leaky_corpus() for e in pii["examples"])

    # Kept in the registry like an evaluation, linked to the model by "audits" and to its dataset.
    registry = Registry.for_workspace(leaky)
    record = registry.get(report.id, "eval")
    assert record.kind == "privacy-audit" and record.metrics["canary_max_exposure"] == pytest.approx(np.log2(501), abs=1e-3)
    assert {rel for rel, _ in registry.parents(record.id)} == {"audits", "on_dataset"}
    assert json.loads((Path(record.path) / "report.json").read_text())["flagged"] == report.flagged
    assert (Path(record.path) / "report.html").read_text() == out.read_text()

    page = out.read_text()
    parser = HTMLParser()
    parser.feed(page)
    assert page.count("data:image/png;base64,") == 1 and c["planted"][0]["secret"] in page


def test_a_model_without_leaks_is_not_flagged(lm_workspace: Path, tiny_model):
    cfg = PrivacyAuditConfig(data="tiny", samples=32, memorization_samples=40, prefix_tokens=16, suffix_tokens=16)
    report = privacy_audit("tiny-lm", cfg, Workspace.open(lm_workspace), Registry.for_workspace(lm_workspace))
    assert report.flagged == [] and report.canaries is None
    assert report.pii["generations"] == 32 and report.pii["matches"] == 0
    assert report.memorization["train"]["extracted"] == 0 and report.memorization["train"]["windows"] == 40
    assert not any("is not the dataset" in w for w in report.warnings)


def test_context_limits_and_bad_inputs(lm_workspace: Path, tiny_model, sms_classifier):
    ws, registry = Workspace.open(lm_workspace), Registry.for_workspace(lm_workspace)
    # tiny-lm's context is 32: 32 + 32 tokens shrink to 16 + 16 with a warning.
    report = privacy_audit("tiny-lm", PrivacyAuditConfig(data="tiny", samples=2, memorization_samples=4), ws, registry)
    assert (report.memorization["prefix_tokens"], report.memorization["suffix_tokens"]) == (16, 16)
    assert any("exceed the model's context of 32" in w for w in report.warnings)
    # data the model was not trained on: said (a clean "nothing flagged" on it was registered without a word)
    other = privacy_audit("tiny-lm", PrivacyAuditConfig(data=sms_classifier.lineage["dataset"]["id"], samples=2,
                                                        memorization_samples=4), ws, registry)
    assert any("is not the dataset tiny-lm" in w and "pass --data with its training data" in w for w in other.warnings)
    with pytest.raises(UserError, match="needs the training data: pass --data"):
        privacy_audit("tiny-lm", PrivacyAuditConfig(), ws, registry)
    with pytest.raises(UserError, match="classifier model: the privacy audit probes"):
        privacy_audit("sms-clf", PrivacyAuditConfig(data="tiny"), ws, registry)
    with pytest.raises(UserError, match="pretrain.context = 8 is shorter than a canary"):
        from llmkit.train import pretrain

        pretrain(PretrainConfig(data="tiny", preset="nano", max_steps=1, context=8, canaries=1), ws, registry)


def test_cli(lm_workspace: Path, tiny_model, tmp_path: Path, cli_here):
    proc = cli_here("audit", "privacy", "tiny-lm", "--data", "tiny", "--samples", "4", "--memorization-samples", "4",
                   "--prefix-tokens", "8", "--suffix-tokens", "8", "--json", workspace=lm_workspace, check=True)
    data = json.loads(proc.stdout)
    assert data["model"].startswith("tiny-lm") and data["pii"]["generations"] == 4 and data["flagged"] == []
    proc = cli_here("audit", "privacy", "tiny-lm", workspace=lm_workspace)
    assert proc.returncode == 2 and "pass --data NAME" in proc.stderr and "Traceback" not in proc.stderr
    proc = cli_here("train", "pretrain", "--data", "tiny", "--canaries", "2", "--canary-repeats", "3,zero",
                   workspace=lm_workspace)
    assert proc.returncode == 2 and "train.canary_repeats.1" in proc.stderr


def test_a_model_of_chinese_text_gets_canaries_in_chinese(tmp_path: Path, shared_data: Path):
    """A character vocabulary learnt from Chinese spells neither digits nor Latin letters: --canaries was refused.
    It spells 口令是 and the numerals 一 to 十, so the canaries are written in those and audited the same way."""
    from tests.conftest import TINY

    poems = json.loads((shared_data / "chinese_poetry" / "tangshi300.json").read_text(encoding="utf-8"))
    text = "\n\n".join("".join(p.get("paragraphs") or []) for p in poems[:120]) + "\n\n口令是一二三四五六七八九十。"
    root = train_char_lm(tmp_path / "zh", "zh", text, TINY, max_steps=4, context=32, canaries=1, canary_repeats=[3],
                         batch_size=4)
    registry = Registry.for_workspace(root)
    planted = canaries.load(Path(registry.get("zh", "model").path))
    assert [c.prefix for c in planted] == ["口令是", "口令是"] and [c.repeats for c in planted] == [3, 0]
    assert all(len(c.secret) == 10 and set(c.secret) <= set(canaries.CJK_DIGITS) for c in planted)
    saved = (Path(registry.get("zh", "model").path) / canaries.FILE).read_text(encoding="utf-8")
    assert planted[0].secret in saved and "\\u" not in saved  # readable by whoever opens the file
    report = privacy_audit("zh", PrivacyAuditConfig(data="zh", samples=2, memorization_samples=2, candidates=20),
                           Workspace.open(root), registry)
    assert [row["secret"] for row in report.canaries["planted"]] == [planted[0].secret]


def test_an_audit_that_would_measure_nothing_is_refused_not_passed(lm_workspace: Path, tiny_model, cli_here):
    """--samples 0 --memorization-samples 0 on a model without canaries measured nothing, said "nothing flagged" and
    registered that clean verdict; now one line, exit 2, nothing kept."""
    registry = Registry.for_workspace(lm_workspace)
    before = len(registry.list("eval"))
    proc = cli_here("audit", "privacy", "tiny-lm", "--data", "tiny", "--samples", "0", "--memorization-samples", "0",
                    workspace=lm_workspace)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == ("error: nothing to audit: privacy.samples and privacy.memorization_samples are 0 and "
                                   f"{tiny_model.ref} has no canaries; give --samples or --memorization-samples a number "
                                   "of generations or windows")
    assert len(registry.list("eval")) == before
