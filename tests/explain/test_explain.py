"""`llmkit explain` on real tiny models: the tiny char LM ('tiny-lm') and the SMS classifier ('sms-clf')."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from llmkit.config import ExplainConfig
from llmkit.errors import UserError
from llmkit.explain import explain_loaded, load_for_explain
from llmkit.explain.report import html_report, terminal_text, write_html
from llmkit.registry import Registry

SPAM = [
    "WINNER!! Claim your free prize now, call 09061701461 to collect",
    "URGENT! You have won a 1 week FREE membership in our £100,000 Prize Jackpot! Txt CLAIM to 81010",
    "Congratulations! You have been selected to receive a £900 cash prize. Call 09050000327 now to claim",
    "FREE entry to win a brand new mobile phone! Text WIN to 87121 now. T&Cs apply",
]
JSON_KEYS = {"model", "kind", "method", "text", "tokens", "scores", "normalized", "special", "target", "quantity", "value",
             "probability", "aopc", "aopc_random", "faithfulness", "seconds", "seconds_total", "warnings"}


@pytest.fixture(scope="module")
def clf(lm_workspace: Path, sms_classifier):
    return load_for_explain("sms-clf", Registry.for_workspace(lm_workspace))


@pytest.fixture(scope="module")
def lm(lm_workspace: Path, tiny_model):
    return load_for_explain("tiny-lm", Registry.for_workspace(lm_workspace))


def _run(loaded, text: str, **cfg):
    model, tokenizer, kind, labels, max_length, ref = loaded
    return explain_loaded(model, tokenizer, kind, text, ExplainConfig(**cfg), labels=labels, max_length=max_length, name=ref)


@pytest.mark.parametrize("method", ["ig", "occlusion", "shap", "attention"])
def test_every_method_scores_every_token_on_both_kinds(clf, lm, method: str):
    for loaded, text in ((clf, SPAM[0]), (lm, "ROMEO: I will")):
        exp = _run(loaded, text, method=method, steps=20)
        n = len(exp.tokens)
        assert n > 3 and len(exp.scores) == len(exp.normalized) == len(exp.special) == n
        assert np.isfinite(exp.scores).all() and max(abs(s) for s in exp.normalized) == pytest.approx(1.0)
        data = json.loads(json.dumps(exp.to_dict()))
        assert JSON_KEYS <= set(data) and 0.0 <= data["probability"] <= 1.0
        assert ("convergence_delta" in data) == (method == "ig")
        assert ("samples" in data) == (method == "shap")
        if method == "attention":
            assert data["attention"]["layers"] >= 2 and len(data["attention"]["rollout"]) == n
    assert exp.special[0] and exp.tokens[0] == "<|endoftext|>"  # the LM's BOS is shown, flagged special


def test_integrated_gradients_is_complete(clf, lm):
    # Completeness: sum of attributions = f(x) - f(baseline), up to the integral's approximation error.
    for loaded, text in ((clf, SPAM[0]), (lm, "ROMEO: I will")):
        exp = _run(loaded, text, method="ig", steps=50)
        gap = exp.value - exp.baseline_value
        assert abs(sum(exp.scores) - gap) == pytest.approx(exp.convergence_delta, abs=1e-4)
        # Measured at 50 steps: 0.2% of the gap on sms-clf, 0.3% on tiny-lm.
        assert exp.convergence_delta < 0.02 * abs(gap), (exp.convergence_delta, gap)


def test_completion_and_target_label(clf, lm):
    comp = _run(lm, "ROMEO: I will", method="occlusion", completion=" not")
    assert comp.quantity == "log_probability" and comp.value < 0 and comp.probability == pytest.approx(np.exp(comp.value))
    assert "".join(comp.tokens[1:]) == "ROMEO: I will"  # the completion is the target, not an input
    ham = _run(clf, SPAM[0], method="occlusion", target="ham")
    spam = _run(clf, SPAM[0], method="occlusion", target="spam")
    assert ham.target == "ham" and spam.target == "spam" and ham.probability + spam.probability == pytest.approx(1.0, abs=1e-5)
    # Two labels: what raises spam lowers ham, token by token.
    np.testing.assert_allclose(ham.scores, -np.array(spam.scores), atol=1e-5)


def test_ig_occlusion_and_shap_are_more_faithful_than_random_deletion(clf):
    for method in ("ig", "occlusion", "shap"):
        runs = [_run(clf, text, method=method, target="spam", steps=20) for text in SPAM[:3]]
        aopc = float(np.mean([r.aopc for r in runs]))
        random = float(np.mean([r.aopc_random for r in runs]))
        assert aopc > random, (method, aopc, random)


def test_bad_inputs(clf, lm, lm_workspace: Path, cli_here):
    with pytest.raises(UserError, match="unknown target label 'eggs'.*ham, spam"):
        _run(clf, SPAM[0], target="eggs")
    proc = cli_here("explain", "sms-clf", SPAM[0], "--target", "eggs", workspace=lm_workspace)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "ham, spam" in lines[0], proc.stderr
    long_text = "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer"
    exp = _run(lm, long_text, method="occlusion")
    assert len(exp.tokens) == 32 and exp.warnings and "context of 32" in exp.warnings[0]
    assert "".join(exp.tokens[1:]) == long_text[-31:]  # BOS kept, then the last tokens (they predict the next)
    for args, says in ((["--target", "x", "--completion", " love"], "--target and --completion exclude each other"),
                       (["--out", str(lm_workspace)], f"--out {lm_workspace} is a folder; give a file path")):
        proc = cli_here("explain", "tiny-lm", "ROMEO:", *args, workspace=lm_workspace)  # the target was dropped; exit 1 after the work
        assert proc.returncode == 2 and proc.stderr.startswith(f"error: {says}"), proc.stderr
    clipped = _run(clf, " ".join(SPAM), method="occlusion")
    assert len(clipped.tokens) == 48 and "longer than the model's 48" in clipped.warnings[0]
    # A model that cannot return attention weights: every transformers model we ship can (eager attention),
    # so that case is not constructed here.


def test_html_report_and_cli(clf, lm_workspace: Path, tmp_path: Path, cli_here):
    exp = _run(clf, SPAM[0], method="attention")
    path = write_html(exp, tmp_path / "explain.html")
    page = path.read_text(encoding="utf-8")

    class Collect(HTMLParser):
        def __init__(self):
            super().__init__()
            self.text, self.imgs = [], []

        def handle_data(self, data):
            self.text.append(data)

        def handle_starttag(self, tag, attrs):
            if tag == "img":
                self.imgs.append(dict(attrs)["src"])

    parser = Collect()
    parser.feed(page)
    body = "".join(parser.text)
    assert all(token in body for token in exp.tokens)
    assert len(parser.imgs) == 1 and parser.imgs[0].startswith("data:image/png;base64,")
    assert "no direction" in body and "raises the target" not in body  # attention weights are never negative
    signed = html_report(_run(clf, SPAM[0], method="occlusion"))
    assert "<img" not in signed and "green: the token raises the target" in signed
    assert len(terminal_text(exp).spans) == len(exp.tokens)
    out = tmp_path / "cli.html"
    proc = cli_here("explain", "sms-clf", SPAM[1], "--method", "ig", "--steps", "16", "--out", str(out), "--json",
                   workspace=lm_workspace)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["target"] == "spam" and data["html"] == str(out) and out.exists()
    assert len(data["tokens"]) == len(data["scores"]) and data["convergence_delta"] >= 0


def _occluded_drops(loaded, text: str, label: str, windows: list[list[int]]) -> list[float]:
    """p(label | text) minus p(label | text with each window's tokens replaced by pad), by hand."""
    import torch

    model, tokenizer, _, labels, max_length, _ = loaded
    ids = torch.tensor(tokenizer(text, truncation=True, max_length=max_length)["input_ids"])
    batch = ids[None].repeat(len(windows) + 1, 1)
    for row, window in enumerate(windows, 1):
        batch[row, window] = tokenizer.pad_token_id
    with torch.no_grad():
        p = model(input_ids=batch).logits.float().softmax(-1)[:, labels.index(label)]
    return [float(p[0] - q) for q in p[1:]]


def test_occlusion_span_scores_a_token_by_the_mean_drop_of_the_windows_covering_it(clf, lm_workspace: Path, cli_here):
    text = SPAM[2]
    exp = _run(clf, text, method="occlusion", span=3, target="spam")
    free = [i for i, special in enumerate(exp.special) if not special]
    windows = [free[s: s + 3] for s in range(len(free) - 2)]
    drops = _occluded_drops(clf, text, "spam", windows)
    for i in range(len(exp.tokens)):
        covering = [d for d, w in zip(drops, windows, strict=True) if i in w]
        assert exp.scores[i] == pytest.approx(float(np.mean(covering)) if covering else 0.0, abs=1e-5), i
    single = _run(clf, text, method="occlusion", span=1, target="spam")
    assert single.scores != exp.scores and exp.to_dict()["span"] == 3
    # One window over every free token: one drop, shared by all of them.
    whole = _run(clf, text, method="occlusion", span=1000, target="spam")
    assert whole.span == len(free)
    assert {round(whole.scores[i], 6) for i in free} == {round(_occluded_drops(clf, text, "spam", [free])[0], 6)}
    # The CLI passes --span through: the same scores.
    proc = cli_here("explain", "sms-clf", text, "--method", "occlusion", "--span", "3", "--target", "spam", "--json",
                   workspace=lm_workspace)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["span"] == 3 and data["scores"] == pytest.approx(exp.scores, abs=1e-5)


def test_next_token_explains_the_models_most_likely_next_token(lm, clf, lm_workspace: Path, tmp_path: Path, cli_here):
    import torch

    from llmkit.generate import encode_prompt

    model, tokenizer = lm[0], lm[1]
    text = "ROMEO:\n"
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([encode_prompt(tokenizer, text)])).logits[0].float()
    probs = logits[-1].softmax(-1)
    top = int(probs.argmax())
    # The text is chosen so that the token after "ROMEO:" is another one: the last position is the one explained.
    assert int(logits[-2].argmax()) != top
    exp = _run(lm, text, method="occlusion")
    assert exp.target == tokenizer.decode([top]) and exp.quantity == "probability"
    assert exp.probability == pytest.approx(float(probs[top]), abs=1e-5)
    other = int(probs.argsort()[-2])  # --target picks another token: that one is explained
    chosen = _run(lm, text, method="occlusion", target=tokenizer.decode([other]))
    assert chosen.target == tokenizer.decode([other]) and chosen.probability == pytest.approx(float(probs[other]), abs=1e-5)
    # --next-token wins over a completion set in the config file.
    cfg = tmp_path / "explain.yaml"
    cfg.write_text("explain:\n  completion: ' not'\n  method: occlusion\n")
    proc = cli_here("explain", "tiny-lm", text, "--config", str(cfg), "--next-token", "--json", workspace=lm_workspace)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert (data["target"], data["quantity"], data["method"]) == (tokenizer.decode([top]), "probability", "occlusion")
    assert data["probability"] == pytest.approx(float(probs[top]), abs=1e-5)
    both = cli_here("explain", "tiny-lm", text, "--next-token", "--completion", " not", workspace=lm_workspace)
    assert both.returncode == 2 and "exclude each other" in both.stderr and "Traceback" not in both.stderr

    # on a classifier it explained the predicted label without a word
    clf = cli_here("explain", "sms-clf", "win a prize now", "--next-token", workspace=lm_workspace)
    assert clf.returncode == 2 and clf.stderr.strip() == (
        "error: --next-token is for causal language models; sms-clf is a classifier: its explanation is of a label "
        "(the predicted one, or --target LABEL)"), clf.stderr


def test_a_removed_token_is_never_a_token_that_ends_a_turn_or_a_text(smollm2, clf):
    """SmolLM2 pads with its end of turn (<|im_end|>) and its unk is <|endoftext|>: used as the stand-in for a removed
    token (occlusion, SHAP, the IG baseline, deletion) it cut the prompt there, so nearly every removal scored the whole
    probability and deletion was no better than random. A dedicated pad (BERT's [PAD]) stays the stand-in."""
    from llmkit.explain.attribution import _fill_id

    loaded = load_for_explain(str(smollm2.path))
    tokenizer = loaded[1]
    fill, shown = _fill_id(tokenizer)
    assert fill not in {tokenizer.eos_token_id, tokenizer.bos_token_id} and fill not in tokenizer.all_special_ids, shown
    assert _fill_id(clf[1]) == (clf[1].pad_token_id, "[PAD]")
    exp = _run(loaded, "To bake bread you need flour, water, salt and", method="occlusion")
    assert exp.target == " yeast"
    assert exp.aopc - exp.aopc_random > 0.03, (exp.aopc, exp.aopc_random)  # 0.010 with <|im_end|>, 0.053 with " "


def test_a_token_the_classifier_reads_as_unknown_shows_the_text_it_stands_for(clf):
    """minilm-l6's WordPiece reads most Chinese characters as [UNK]: the explanation showed [UNK] where the user
    wrote 关关雎鸠."""
    tokenizer = clf[1]
    text = "free prize 关关雎鸠 now"
    assert tokenizer.unk_token_id in tokenizer(text)["input_ids"]  # the base does lose these characters
    exp = _run(clf, text, method="occlusion")
    assert "[UNK]" not in exp.tokens and exp.tokens.count("关") == 2 and "鸠" in exp.tokens
    assert exp.tokens[0] == "[CLS]" and exp.tokens[-1] == "[SEP]"  # other special tokens as they are


def test_text_the_vocabulary_lacks_is_scored_and_the_warning_says_it_was_unknown(clf, lm):
    """A Chinese text on the tiny char LM read as <|unk|> throughout, and <|unk|> counted as a special token: every
    score 0, no warning, faithfulness over 0 tokens. Its positions are the user's text: scored, shown as that text,
    with a warning; BOS and [CLS]/[SEP] stay special."""
    exp = _run(lm, "你好世界", method="occlusion")
    assert exp.tokens == ["<|endoftext|>", "你", "好", "世", "界"] and exp.special == [True] + [False] * 4
    assert any(s != 0.0 for s in exp.scores[1:]) and exp.faithfulness["k"] == 4
    assert exp.warnings == ["4 of the text's tokens are outside the model's vocabulary and read as <|unk|> (你好世界): "
                            "the model sees them all as one same token"]
    mixed = _run(lm, "ROMEO: 好 lord", method="occlusion")
    assert mixed.tokens[mixed.tokens.index("好")] == "好" and not mixed.special[mixed.tokens.index("好")]
    known = _run(lm, "ROMEO: I will", method="occlusion")
    assert known.warnings == []
    words = _run(clf, "free prize 关关雎鸠 now", method="occlusion")
    assert words.special[0] and words.special[-1] and not any(words.special[1:-1])
    assert len(words.warnings) == 1 and "read as [UNK] (关雎鸠)" in words.warnings[0]


def test_a_text_of_only_special_tokens_is_refused_in_one_line(clf, lm):
    """" " for the classifier is [CLS] [SEP]: it printed scores of nothing and a faithfulness line about 0 tokens."""
    with pytest.raises(UserError, match=r"^nothing to explain: TEXT ' ' gives sms-clf:v\d+ only special tokens "
                                        r"\(\[CLS\] \[SEP\]\); give text with words in it$"):
        _run(clf, " ", method="occlusion")
    assert _run(lm, " ", method="occlusion").tokens == ["<|endoftext|>", " "]  # a space is a token of the char LM


def test_a_classifier_explains_the_text_predict_reads(clf):
    """Full-width letters from an IME are explained as the letters predict scores (cleaned as at prepare)."""
    typed, plain = _run(clf, "ＦＲＥＥ prize\n\nｎｏｗ", method="occlusion"), _run(clf, "FREE prize now", method="occlusion")
    assert typed.tokens == plain.tokens and "[UNK]" not in typed.tokens
    assert typed.probability == pytest.approx(plain.probability, abs=1e-6)
