"""A classifier's bias audit with Chinese terms: the built-in templates they fill are Chinese, and members the model
cannot tell apart are named.

Chinese terms filled the English templates ("We are meeting 先生 at the cafe at six."), texts no Chinese classifier
reads; and minilm-l6 reads both 他 and 她 as [UNK], so their swap moved nothing and the group passed as fair.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from llmkit.audit import bias_audit
from llmkit.audit.terms import TEMPLATES, ZH_TEMPLATES
from llmkit.config import BiasAuditConfig
from llmkit.registry import Registry
from llmkit.workspace import Workspace

ENGLISH_WORD = re.compile("[a-z]{3,}")  # the templates of English words; 回复WIN is a spam text's own


@pytest.fixture(scope="module")
def zh_terms(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("terms") / "terms.yaml"
    path.write_text("性别: [[他, 她], [先生, 女士]]\n地域: [北京人, 上海人, 广东人]\n", encoding="utf-8")
    return path


def _audit(root: Path, **cfg):
    ws = Workspace.open(root)
    return bias_audit("sms-clf", BiasAuditConfig(**cfg), ws, Registry.for_workspace(ws.root))


def test_chinese_terms_fill_chinese_templates_and_same_token_members_are_named(lm_workspace, sms_classifier, zh_terms):
    report = _audit(lm_workspace, terms=str(zh_terms), groups=["性别", "地域"], worst=200)
    assert report.texts == len(ZH_TEMPLATES) * 7  # every Chinese template with each of the 7 terms, nothing else
    originals = {w["original"] for w in report.worst}
    assert originals and not any(ENGLISH_WORD.search(t) for t in originals), sorted(originals)[:3]
    assert "我们六点在咖啡馆见先生。" in originals
    assert report.warnings == [
        "性别: sms-clf:v1 reads 他 = 她 ([UNK]) as the same tokens, so swapping them cannot change its prediction and "
        "proves nothing; use a base whose vocabulary holds these words"]


def test_english_groups_keep_the_english_templates(lm_workspace, sms_classifier):
    report = _audit(lm_workspace, groups=["religion"], worst=500)
    assert report.warnings == []
    assert {t.replace("{X}", "Muslim") for t in TEMPLATES} <= {w["original"] for w in report.worst} | {
        w["counterfactual"] for w in report.worst}
