"""The web UI's explain line in Chinese: a classifier whose prediction no token moves is not shown as "✓".

A real classifier (the session's sms-clf, copied with its head's weights zeroed, so its output is its bias whatever
the text) is served from its folder; the Chinese UI classifies a review, explains it, and the verdict says the result
hardly depends on these tokens. The UI used to put "✓" after any AOPC above random, noise included.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests import tiny_lm
from tests.browser_pages import watched_page
from tests.conftest import registered_model
from tests.serve.conftest import start_server


@pytest.fixture(scope="module")
def deaf_server(lm_workspace: Path, sms_classifier, tmp_path_factory):
    folder = tmp_path_factory.mktemp("deaf") / "deaf-clf"
    shutil.copytree(registered_model(lm_workspace, "sms-clf").path, folder)
    weights = load_file(folder / "model.safetensors")
    weights["classifier.weight"] = torch.zeros_like(weights["classifier.weight"])
    weights["classifier.bias"] = torch.tensor([0.3, -0.2], dtype=weights["classifier.bias"].dtype)
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    lm_folder = folder.parent / "tiny-char"  # a tiny real causal LM, for an explained completion (its log p)
    tokenizer = tiny_lm.char_tokenizer()
    tiny_lm.train_tiny(tokenizer).save_pretrained(lm_folder)
    tokenizer.save_pretrained(lm_folder)
    running, _ = start_server(lm_workspace, [f"deaf={folder}", f"tiny={lm_folder}"])
    yield running.url
    running.stop()


def test_chinese_ui_says_the_result_does_not_depend_on_the_tokens(browser, deaf_server):
    with watched_page(browser, locale="zh-CN") as page:
        page.goto(deaf_server + "/")
        page.wait_for_function("() => [...document.querySelectorAll('[data-testid=model-select] option')]"
                               ".some(o => o.value === 'deaf')")
        page.get_by_test_id("model-select").select_option("deaf")
        page.get_by_test_id("classify-input").fill("服务很好，非常满意！")
        page.get_by_test_id("classify-button").click()
        page.get_by_test_id("explain-button").first.click()
        page.get_by_test_id("explain-aopc").first.wait_for(timeout=60_000)
        verdict = page.get_by_test_id("explain-verdict").first.inner_text()
        assert verdict == "（删去哪些 token 都几乎不改变 p，不到 1 %：结果基本不依赖这些 token）"
        assert "✓" not in page.get_by_test_id("explain-aopc").first.inner_text()
        tokens = page.get_by_test_id("explain-token").all_inner_texts()
        assert "服" in tokens and "！" in tokens and "[UNK]" not in tokens


def test_an_explained_completion_says_its_drops_are_of_log_p(browser, deaf_server):
    """A completion's target is its log p: the line said p "drops by 19.688" next to "p = 0.000"."""
    with watched_page(browser, locale="zh-CN") as page:
        page.goto(deaf_server + "/")
        page.wait_for_function("() => [...document.querySelectorAll('[data-testid=model-select] option')]"
                               ".some(o => o.value === 'tiny')")
        page.evaluate("""async () => {
          const { explainButton } = await import('/ui/explain.js');
          const box = explainButton(() => ({ model: 'tiny', input: 'the cat', completion: ' sat on the mat' }));
          document.body.append(box);
          box.querySelector('[data-testid=explain-button]').click();
        }""")
        line = page.get_by_test_id("explain-aopc").first
        line.wait_for(timeout=60_000)
        assert line.inner_text().startswith("忠实度：删去最重要的 token 后 log p 平均下降 ")
