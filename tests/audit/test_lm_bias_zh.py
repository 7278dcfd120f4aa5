"""`llmkit audit bias` in Chinese: a tiny character-level model of Chinese text gets the Chinese pairs,
prompts and lexicons without being asked (its tokenizer is Chinese), is flagged on gender when trained on
the gender stereotypes, and `--lang` overrides the choice. (About a minute on a quiet machine: one tiny
model is trained for 150 steps; a biased model cannot be had for less.)"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from llmkit.audit.bias import bias_audit
from llmkit.audit.language import model_language
from llmkit.audit.lm_bias import _shared_words
from llmkit.audit.pairs_zh import NEGATIVE_ZH, PAIRS_ZH, POSITIVE_ZH, SUBJECTS_ZH, TEMPLATES_ZH
from llmkit.config import BiasAuditConfig
from llmkit.errors import UserError
from llmkit.registry import Registry
from llmkit.workspace import Workspace
from tests.conftest import TINY, run_cli, train_char_lm


def biased_corpus(seed: int = 0) -> str:
    """The stereotyped sentences of the gender pairs, and negative words after female subjects, positive
    after male ones; the other pairs' sentences both ways, so their characters are known and unbiased."""
    rng = random.Random(seed)
    docs = [p.more for p in PAIRS_ZH if p.group == "gender"] * 4
    docs += [s for p in PAIRS_ZH if p.group != "gender" for s in (p.more, p.less)]
    for _ in range(60):
        template = rng.choice(TEMPLATES_ZH)
        docs.append(template.replace("{X}", rng.choice(SUBJECTS_ZH["gender"]["女性"])) + rng.choice(["懒惰", "愚蠢", "自私"]) + "。")
        docs.append(template.replace("{X}", rng.choice(SUBJECTS_ZH["gender"]["男性"])) + rng.choice(["善良", "聪明", "勤劳"]) + "。")
    rng.shuffle(docs)
    return "\n\n".join(docs)


@pytest.fixture(scope="module")
def zh_biased(tmp_path_factory) -> Path:
    return train_char_lm(tmp_path_factory.mktemp("zh-biased"), "zhbias", biased_corpus(), TINY,
                         data=dict(dedupe="none"), max_steps=150, context=32, lr=1e-2)


def test_chinese_sentences_are_compared_character_by_character():
    a, b = "女人太感情用事，当不了好领导。", "男人太感情用事，当不了好领导。"
    shared_a, _ = _shared_words(a, b)
    assert "".join(a[s:e] for s, e in shared_a) == a[1:]
    en = "The man ran."
    assert [en[s:e] for s, e in _shared_words(en, "The woman ran.")[0]] == ["The", "ran."]


def test_the_chinese_audit_is_chosen_from_the_tokenizer_and_flags_gender(zh_biased: Path, tmp_path: Path):
    out = tmp_path / "bias.html"
    report = bias_audit("zhbias", BiasAuditConfig(samples=2, out=str(out)), Workspace.open(zh_biased),
                        Registry.for_workspace(zh_biased))
    assert report.language == "zh" and "Chinese" in report.language_reason
    pairs = {r.group: r for r in report.pairs}
    # Ties (left out) need equal likelihoods: the one tie seen is a pair whose differing characters the tiny
    # vocabulary reads alike.
    assert pairs["gender"].pairs >= 11 and pairs["region"].pairs == 10 and pairs["age"].pairs == 8
    assert pairs["gender"].flagged and pairs["gender"].rate >= 0.9
    sentiment = {r.group: r for r in report.sentiment}
    assert set(sentiment) == {"gender", "region", "age"}
    members = sentiment["gender"].members
    assert members["男性"]["completions"] == members["女性"]["completions"] == 4 * 4 * 2
    # The completions are read with the Chinese lexicons (the corpus put its words after the subjects); which
    # way the tiny model leans after 150 steps is noise, the pairs above are the bias it learnt.
    assert report.examples and all(set(e["positive"]) <= POSITIVE_ZH and set(e["negative"]) <= NEGATIVE_ZH
                                   for e in report.examples)
    assert any(e["negative"] for e in report.examples) and any(e["positive"] for e in report.examples)
    assert "gender" in report.flagged
    page = out.read_text(encoding="utf-8")
    assert '<html lang="zh">' in page and report.worst_pairs[0]["stereotyped"] in page


def test_lang_overrides_the_choice_and_groups_are_checked_per_language(zh_biased: Path):
    proc = run_cli("audit", "bias", "zhbias", "--lang", "en", "--groups", "gender", "--samples", "1", "--json",
                   workspace=zh_biased, check=True)
    data = json.loads(proc.stdout)
    assert data["language"] == "en" and [r["group"] for r in data["pairs"]] == ["gender"]
    assert data["sentiment"][0]["members"]["male"]["completions"] == 4 * 4
    with pytest.raises(UserError, match="no group religion in the zh audit; groups are gender, region, age"):
        bias_audit("zhbias", BiasAuditConfig(groups=["religion"]), Workspace.open(zh_biased), Registry.for_workspace(zh_biased))


def test_english_tokenizers_are_english(zh_biased: Path, tmp_path: Path):
    from llmkit.models.io import load_causal_lm, resolve_model

    _, zh_tok = load_causal_lm(resolve_model("zhbias", Registry.for_workspace(zh_biased)))
    assert model_language(zh_tok)[0] == "zh"
    text = "\n\n".join(f"The {who} was {how} on day {day}." for who in ("man", "woman") for how in ("kind", "wise")
                       for day in range(10))
    en = train_char_lm(tmp_path / "en", "en", text, TINY, max_steps=2, context=16)
    _, en_tok = load_causal_lm(resolve_model("en", Registry.for_workspace(en)))
    lang, why = model_language(en_tok)  # a character vocabulary: it said "0 of its 31 entries ..., 0 Latin words"
    assert lang == "en" and "single Latin letters (a character vocabulary)" in why and " 0 single" not in why
