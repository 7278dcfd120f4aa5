"""The bias audit on two real minilm-l6 classifiers trained in seconds: one whose labels follow gender
words (must be flagged) and one whose labels follow only "urgent"/"later" (must not be)."""

from __future__ import annotations

import json
import random
from html.parser import HTMLParser
from pathlib import Path

import pytest

from llmkit.audit import bias_audit
from llmkit.audit.terms import BUILTIN, TermGroup, load_terms, match_case, term_groups
from llmkit.config import BiasAuditConfig, ClassifyConfig, DataConfig
from llmkit.data import prepare
from llmkit.errors import UserError
from llmkit.registry import Registry
from llmkit.workspace import Workspace

MALE = ["he", "the man", "my husband", "his father", "the boy", "mr smith", "my son", "her husband"]
FEMALE = ["she", "the woman", "my wife", "her mother", "the girl", "mrs smith", "my daughter", "his wife"]
ACTIONS = ["bought a new {t}", "lost the {t} at the {p}", "wants to visit the {p}", "painted the {t} blue",
           "fixed the {t} at the {p}", "is waiting near the {p}", "found a {t} in the {p}", "sold the old {t}"]
THINGS = ["bike", "lamp", "car", "chair", "phone", "table", "kettle", "radio"]
PLACES = ["park", "station", "office", "market", "library", "garden", "beach", "museum"]


def _sentence(rng: random.Random, subject: str) -> str:
    action = rng.choice(ACTIONS).format(t=rng.choice(THINGS), p=rng.choice(PLACES))
    return f"{subject} {action}"


def _biased(rng: random.Random) -> list[dict]:
    # The label is the subject's gender, nothing else.
    rows = [{"text": _sentence(rng, rng.choice(MALE)), "label": "approve"} for _ in range(90)]
    rows += [{"text": _sentence(rng, rng.choice(FEMALE)), "label": "reject"} for _ in range(90)]
    return rows


def _unbiased(rng: random.Random) -> list[dict]:
    # The label is urgent vs later; each sentence comes in a male and a female version with the same label.
    rows = []
    for i in range(90):
        urgent = i % 2 == 0
        k = rng.randrange(len(MALE))
        tail = rng.choice(["this is urgent", "urgent, reply now", "it is urgent today"] if urgent else
                          ["do it later", "later this week is fine", "no rush, later"])
        action = rng.choice(ACTIONS).format(t=rng.choice(THINGS), p=rng.choice(PLACES))
        for subject in (MALE[k], FEMALE[k]):
            rows.append({"text": f"{subject} {action}, {tail}", "label": "urgent" if urgent else "later"})
    return rows


@pytest.fixture(scope="module")
def audit_ws(tmp_path_factory) -> Path:
    """A workspace with classify datasets 'gender-biased' and 'gender-fair' and a classifier trained on each."""
    from llmkit.train.classification import classify

    root = tmp_path_factory.mktemp("audit-ws")
    ws = Workspace.open(root)
    registry = Registry.for_workspace(ws.root)
    for name, make in (("gender-biased", _biased), ("gender-fair", _unbiased)):
        rows = make(random.Random(3))
        source = root / f"{name}.jsonl"
        source.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        # dedupe none: the male/female twins are near-duplicates on purpose; pii keep: "mr smith" is no secret.
        prepare(DataConfig(inputs=[str(source)], name=name, task="classify", tokenizer="char", dedupe="none", pii="keep",
                           splits={"val": 0.1, "test": 0.15}), ws, registry)
        classify(ClassifyConfig(base="minilm-l6", data=name, name=f"{name}-clf", epochs=2, batch_size=16, lr=2e-4,
                                max_length=32, seed=1), ws, registry)
    registry.close()
    return root


def _audit(root: Path, model: str, **cfg):
    ws = Workspace.open(root)
    return bias_audit(model, BiasAuditConfig(**cfg), ws, Registry.for_workspace(ws.root))


def test_biased_classifier_is_flagged_for_gender(audit_ws: Path):
    report = _audit(audit_ws, "gender-biased-clf", data="gender-biased", groups=["gender", "religion"])
    gender = report.group("gender")
    assert gender.flagged and "gender" in report.flagged, gender
    assert gender.flip_rate > 0.3 and gender.mean_delta > 0.3
    # The model's own view of the terms: "he" reads as approve, "she" as reject.
    assert gender.terms["he"]["probabilities"]["approve"] > 0.7 > gender.terms["she"]["probabilities"]["approve"]
    # Dataset records mentioning a term carry accuracy / F1; the model fits its own data (recounted below).
    scored = [t for t in gender.terms.values() if "accuracy" in t]
    assert len(scored) >= 8 and all(t["accuracy"] >= 0.9 for t in scored), gender.terms
    assert report.split == "test"
    # Worst examples come first and are real swaps of gender terms.
    assert report.worst and report.worst[0]["group"] == "gender"
    assert [e["delta"] for e in report.worst] == sorted((e["delta"] for e in report.worst), reverse=True)
    pairs = [frozenset((e["original"], e["counterfactual"])) for e in report.worst]
    assert len(pairs) == len(set(pairs))  # each swap once, not A -> B and then B -> A
    top = report.worst[0]
    assert top["original"] != top["counterfactual"] and top["delta"] > 0.5
    assert abs(abs(top["p_original"] - top["p_counterfactual"]) - top["delta"]) < 1e-3


def test_group_and_term_figures_equal_a_recount_of_the_test_records(audit_ws: Path):
    from llmkit.models.io import load_classifier, resolve_model
    from llmkit.predict import classify_texts

    report = _audit(audit_ws, "gender-biased-clf", data="gender-biased", groups=["gender"], templates=False)
    gender, group = report.group("gender"), BUILTIN["gender"]
    registry = Registry.for_workspace(audit_ws)
    folder = Path(registry.get("gender-biased", "dataset").path)
    records = [json.loads(line) for line in (folder / "records" / "test.jsonl").read_text().splitlines()]
    gold = {r["text"]: r["label"] for r in records if group.find(r["text"])}
    copies = {text: group.counterfactuals(text) for text in gold}
    texts = list(dict.fromkeys([*gold, *(c for cs in copies.values() for c in cs)]))
    clf, tokenizer, labels = load_classifier(resolve_model("gender-biased-clf", registry))
    label = {t: p["label"] for t, p in zip(texts, classify_texts(clf, tokenizer, labels, texts, 32), strict=True)}

    assert (gender.originals, gender.pairs) == (len(gold), sum(map(len, copies.values())))
    flips = [label[c] != label[t] for t, cs in copies.items() for c in cs]
    assert gender.flip_rate == pytest.approx(sum(flips) / len(flips), abs=1e-4)
    for term, entry in gender.terms.items():
        records_with = [t for t in gold if term.lower() in group.find(t)]
        assert entry["texts"] == sum(term.lower() in group.find(t) for t in texts), term
        assert entry.get("records", 0) == len(records_with), term
        if records_with:
            right = sum(label[t] == gold[t] for t in records_with)
            assert entry["accuracy"] == pytest.approx(right / len(records_with), abs=1e-4), term
    # The model learnt gender, not the sentence: with the term swapped and the label kept, it is mostly wrong.
    swapped = [label[c] == gold[t] for t, cs in copies.items() for c in cs]
    assert sum(swapped) / len(swapped) < 0.2


def test_unbiased_classifier_is_not_flagged_for_gender(audit_ws: Path):
    report = _audit(audit_ws, "gender-fair-clf", data="gender-fair", groups=["gender"])
    gender = report.group("gender")
    assert not gender.flagged, (gender.flip_rate, gender.mean_delta, report.worst[:3])
    assert gender.pairs > 300  # templates and dataset records both audited
    assert gender.flip_rate <= 0.05 and gender.mean_delta <= 0.05
    # Same thresholds, same data pipeline: the biased model is far above them (the check can fail).
    biased = _audit(audit_ws, "gender-biased-clf", data="gender-biased", groups=["gender"]).group("gender")
    assert biased.mean_delta > 5 * max(gender.mean_delta, 0.01)


def test_counterfactual_swaps():
    gender = BUILTIN["gender"]
    assert gender.counterfactuals("He told his wife.") == ["She told her husband."]
    assert gender.counterfactuals("The Man said HE would") == ["The Woman said SHE would"]
    assert gender.counterfactuals("the manager and the hero") == []  # word boundaries: no 'man' in manager
    names = BUILTIN["names"]
    assert names.counterfactuals("Ask emily")[:2] == ["Ask maria", "Ask lakisha"]
    assert len(names.counterfactuals("Ask Emily")) == len(names.columns) - 1
    assert match_case("Mr", "mrs") == "Mrs" and match_case("mr", "Mrs") == "mrs"
    # Chinese has no spaces between words: its terms are found inside the text (they never were), Latin ones keep edges
    chinese = TermGroup("gender", [["他", "她"], ["男人", "女人"], ["he", "she"]])
    assert chinese.counterfactuals("他说那个男人是he的朋友") == ["她说那个女人是she的朋友"]
    assert chinese.counterfactuals("theme") == []


def test_a_classifier_audit_in_chinese_needs_chinese_terms(audit_ws: Path):
    """--lang zh was ignored for a classifier: a Chinese poetry classifier was audited on English spam templates and
    every group came back flagged."""
    with pytest.raises(UserError, match=r"bias.lang = 'zh': the built-in term groups of a classifier audit are "
                                        r"English; give Chinese ones with --terms FILE .*they fill Chinese templates"):
        _audit(audit_ws, "gender-fair-clf", lang="zh")


def test_a_pairs_file_given_to_a_classifier_audit_is_said_to_be_unread(tmp_path: Path, audit_ws: Path):
    """--pairs is the language-model probe's: a classifier's audit dropped it without a word."""
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"group": "g", "more": "x"}\n', encoding="utf-8")
    report = _audit(audit_ws, "gender-fair-clf", groups=["gender"], pairs=str(pairs))
    assert report.warnings == ["bias.pairs is for language models and was not read; a classifier is audited by "
                               "swapping the terms of --terms in texts"]


def test_terms_file_extends_and_overrides(tmp_path: Path, audit_ws: Path):
    yaml_file = tmp_path / "terms.yaml"
    yaml_file.write_text("age:\n  - [young, old]\n  - [teenager, pensioner]\nreligion: [Christian, Muslim]\n")
    groups = term_groups(yaml_file)
    assert set(BUILTIN) <= set(groups) and groups["age"].rows == [["young", "old"], ["teenager", "pensioner"]]
    assert groups["religion"].terms == ["Christian", "Muslim"]  # overridden, not merged
    json_file = tmp_path / "terms.json"
    json_file.write_text(json.dumps({"pets": ["cat", "dog", "parrot"]}))
    assert load_terms(json_file)["pets"].counterfactuals("my cat") == ["my dog", "my parrot"]
    report = _audit(audit_ws, "gender-fair-clf", terms=str(yaml_file), groups=["age", "religion"])
    assert [g.group for g in report.groups] == ["age", "religion"]
    age = report.group("age")
    assert age.pairs > 0 and set(age.terms) == {"young", "old", "teenager", "pensioner"}


@pytest.mark.parametrize("body, reason", [
    ("gender: [he, she\n", "invalid YAML"),
    ("- he\n- she\n", "maps group names"),
    ("age: [[young, old], [teen]]\n", "row 2"),
    ("age: young\n", "non-empty list"),
    ("age: [[young, old], [teen, elderly, ancient]]\n", "row 1 has 2"),
])
def test_malformed_terms_file(tmp_path: Path, body: str, reason: str):
    path = tmp_path / "bad.yaml"
    path.write_text(body)
    with pytest.raises(UserError) as err:
        term_groups(path)
    message = str(err.value)
    assert str(path) in message and reason in message and "\n" not in message
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('{"a": [1, }')
    with pytest.raises(UserError, match=r"bad\.json:1:.*invalid JSON"):
        load_terms(bad_json)
    with pytest.raises(UserError, match="terms file not found"):
        load_terms(tmp_path / "missing.yaml")


def test_cli_json_and_html(audit_ws: Path, tmp_path: Path, cli_here):
    out = tmp_path / "bias.html"
    proc = cli_here("audit", "bias", "gender-biased-clf", "--data", "gender-biased", "--groups", "gender,nationality",
                   "--out", str(out), "--json", workspace=audit_ws)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert {"model", "labels", "groups", "worst", "flagged", "texts", "flip_threshold", "delta_threshold"} <= set(result)
    assert result["flagged"][0] == "gender" and [g["group"] for g in result["groups"]] == ["gender", "nationality"]
    assert {"flip_rate", "mean_delta", "max_delta", "flagged", "terms", "pairs"} <= set(result["groups"][0])
    assert {"original", "counterfactual", "p_original", "p_counterfactual"} <= set(result["worst"][0])

    class Parse(HTMLParser):
        def __init__(self):
            super().__init__()
            self.text, self.external = [], []

        def handle_data(self, data):
            self.text.append(data)

        def handle_starttag(self, tag, attrs):
            self.external += [v for k, v in attrs if k in ("src", "href") and v]

    page = Parse()
    page.feed(out.read_text(encoding="utf-8"))
    text = " ".join(page.text)
    assert not page.external  # self-contained
    assert "FLAGGED" in text and result["worst"][0]["counterfactual"] in text
    bad = cli_here("audit", "bias", "gender-biased-clf", "--terms", str(tmp_path / "nope.yaml"), workspace=audit_ws)
    assert bad.returncode == 2 and "terms file not found" in bad.stderr
