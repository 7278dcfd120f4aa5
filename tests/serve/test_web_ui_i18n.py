"""The web UI in Chinese and English, in a real headless Chromium against the session server: a browser that
prefers Chinese gets the Chinese UI; every string on every view of it comes from the zh-CN table (or is data:
model names, refs, numbers, dates); the switch in the header persists across a reload; no view overflows a
375 px phone in either language. One page for the whole file (tests run in order and share it).
"""

from __future__ import annotations

import json

import pytest
import requests

from tests.browser_pages import watched_page

# In the page: every text node, placeholder, title and aria-label of the body that is not user or model text
# (a message's content, a classified text, the tokens of an explanation or a tooltip), each checked against
# the zh-CN table: a string of it, a {placeholder} template of it whose filled parts pass too ({error} is
# someone else's message), or data (a known data string, numbers, dates, units, punctuation).
UNTRANSLATED = """async (dataStrings) => {
  const { MESSAGES, TERMS } = await import('/ui/messages.js');
  const table = [...Object.values(MESSAGES['zh-CN']), ...Object.values(TERMS['zh-CN'])];
  const esc = (s) => s.replace(/[.*+?^${}()|[\\]\\\\]/g, '\\\\$&');
  const plain = new Set(table);
  const templates = table.filter((v) => /\\{\\w+\\}/.test(v)).map((v) => ({
    names: [...v.matchAll(/\\{(\\w+)\\}/g)].map((m) => m[1]),
    re: new RegExp('^' + v.split(/\\{\\w+\\}/).map(esc).join('([\\\\s\\\\S]+?)') + '$'),
  }));
  const data = [...new Set(dataStrings)].filter((s) => s.length >= 2).sort((a, b) => b.length - a.length)
    .map((d) => new RegExp('(?<![A-Za-z])' + esc(d) + '(?![A-Za-z])', 'g'));
  const isData = (s) => {
    let rest = s;
    for (const re of data) rest = rest.replace(re, ' ');
    rest = rest.replace(/\\d{4}年\\d{1,2}月\\d{1,2}日/g, ' ')
      .replace(/[-+]?\\d[\\d,.]*\\s*(kB|KB|MB|GB|TB|B|万|亿|k|K|M|%)?(?![A-Za-z])/g, ' ');
    return /^[\\s\\p{P}\\p{S}]*$/u.test(rest);
  };
  const ok = (s, depth = 0) => {
    s = s.trim();
    if (!s || plain.has(s) || isData(s)) return true;
    if (depth > 2) return false;
    return templates.some(({ names, re }) => {
      const m = s.match(re);
      return m && m.slice(1).every((part, i) => names[i] === 'error' || ok(part, depth + 1));
    });
  };
  const SKIP = '.message .content, .classified-text, .explain-view .tokens, .lp-tip code, script, style';
  const bad = [];
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    if (node.parentElement.closest(SKIP)) continue;
    if (!ok(node.textContent)) bad.push(`text: ${JSON.stringify(node.textContent.trim())}`);
  }
  for (const el of document.body.querySelectorAll('[placeholder], [title], [aria-label]')) {
    if (el.closest(SKIP)) continue;
    for (const attr of ['placeholder', 'title', 'aria-label']) {
      const value = el.getAttribute(attr);
      if (value !== null && !ok(value)) bad.push(`${attr} of <${el.tagName.toLowerCase()}>: ${JSON.stringify(value)}`);
    }
  }
  return bad;
}"""

# In the page: the page must not scroll sideways, and no element may reach past the viewport's sides unless
# an ancestor that clips or scrolls (a table's scroll box) and itself fits holds it.
OVERFLOW = """() => {
  const W = window.innerWidth;
  const out = [];
  const scroll = document.scrollingElement.scrollWidth;
  if (scroll > W) out.push(`the page is ${scroll}px wide`);
  const fits = (r) => r.left >= -0.5 && r.right <= W + 0.5;
  for (const el of document.body.querySelectorAll('*')) {
    const r = el.getBoundingClientRect();
    if ((!r.width && !r.height) || fits(r)) continue;
    let held = false;
    for (let a = el.parentElement; a && a !== document.body && !held; a = a.parentElement) {
      held = getComputedStyle(a).overflowX !== 'visible' && fits(a.getBoundingClientRect());
    }
    if (!held) out.push(`<${el.tagName.toLowerCase()} id=${el.id} class=${el.className}> spans ${r.left}..${r.right}`);
  }
  return out;
}"""


def _strings(value, out: set[str], keys: bool = False) -> set[str]:
    """Every string value in a JSON answer (and the keys of its metrics objects, shown as they are stored)."""
    if isinstance(value, str):
        out.add(value)
    elif isinstance(value, list):
        for item in value:
            _strings(item, out, keys)
    elif isinstance(value, dict):
        for key, item in value.items():
            if keys:
                out.add(key)
            _strings(item, out, keys or key == "metrics")
    return out


@pytest.fixture(scope="module")
def page(browser, server):
    # A browser whose first language is Chinese: the UI must start in Chinese without being told.
    with watched_page(browser, locale="zh-CN") as page:
        page.goto(server.base_url + "/")
        yield page


def _data(server) -> list[str]:
    out = {"llmkit", "llmkit eval"}  # the brand, and a command the UI suggests (typed as it is, in any language)
    _strings(requests.get(server.base_url + "/v1/models", timeout=30).json(), out)
    overview = requests.get(server.base_url + "/api/overview", timeout=30).json()
    _strings(overview, out)
    for model in overview["models"]:
        _strings(requests.get(f"{server.base_url}/api/models/{model['id']}", timeout=30).json(), out)
    return sorted(out)


def test_a_chinese_browser_gets_every_view_in_chinese(page, server):
    assert page.evaluate("document.documentElement.lang") == "zh-CN"
    assert page.get_by_test_id("tab-chat").inner_text() == "对话"
    assert page.get_by_test_id("lang-select").input_value() == "zh-CN"
    # a classifier's metrics in a dashboard table: per label (precision_spam was "precision spam") and averaged
    terms = page.evaluate("async () => { const { term } = await import('/ui/i18n.js'); "
                          "return ['precision_spam', 'support_ham', 'f1_垃圾', 'micro_f1', 'ece'].map(term); }")
    assert terms == ["精确率（spam）", "样本数（ham）", "F1（垃圾）", "微 F1", "期望校准误差"]
    page.wait_for_function("() => document.querySelector('[data-testid=model-select]').value === 'tiny-lm'")
    # The chat with an answer, its feedback bar, the correction form, a token's tooltip and a schema error.
    page.locator("#max-tokens").fill("20")
    for seed in range(1, 11):  # a tiny model may end its turn at once: a few seeds find an answer to hover
        page.locator("#clear-chat").click()
        page.locator("#seed").fill(str(seed))
        page.get_by_test_id("prompt-input").fill("你好")
        page.get_by_test_id("prompt-input").press("Enter")
        bubble = page.get_by_test_id("assistant-message").last
        bubble.get_by_test_id("thumbs-up").wait_for()
        if bubble.get_by_test_id("lp-token").count():
            break
    else:
        pytest.fail("no answer with tokens in seeds 1-10")
    bubble.get_by_test_id("correct-button").click()
    bubble.get_by_test_id("lp-token").first.hover()
    page.get_by_test_id("lp-tooltip").wait_for()
    page.locator("#schema-box summary").click()
    page.get_by_test_id("schema-input").fill("{not json")
    page.get_by_test_id("prompt-input").fill("再来一次")
    page.get_by_test_id("send-button").click()
    page.get_by_test_id("schema-error").wait_for()
    data = _data(server)
    bad = page.evaluate(UNTRANSLATED, data)
    page.get_by_test_id("schema-input").fill("")

    # The classify box, with a result.
    page.get_by_test_id("model-select").select_option("sms-clf")
    page.get_by_test_id("classify-input").fill("WINNER!! Claim your free prize now")
    page.get_by_test_id("classify-button").click()
    page.get_by_test_id("classify-label").first.wait_for()
    bad += page.evaluate(UNTRANSLATED, data)

    # The dashboard, with a run's loss curve drawn and a model's detail open.
    page.get_by_test_id("tab-dashboard").click()
    # serve-lm's run has a loss curve (the newest run of a busy workspace may have none: a study, a killed run)
    from llmkit.models.io import resolve_model

    run_id = dict(server.registry.parents(resolve_model("serve-lm", server.registry).id))["produced_by"].id
    page.get_by_test_id("runs-table").locator(f"tr[data-id='{run_id}']").click()
    page.wait_for_function("() => Number(document.querySelector('[data-testid=loss-chart]').dataset.points) > 0")
    page.get_by_test_id("models-table").locator("tbody tr.pickable").first.click()
    page.get_by_test_id("model-detail").locator("h3").first.wait_for()
    page.get_by_test_id("served-table").locator("tbody tr").first.wait_for()
    bad += page.evaluate(UNTRANSLATED, data)
    assert not bad, "strings not from the zh-CN table:\n" + "\n".join(bad)
    # Dates and numbers are written the Chinese way.
    created = page.get_by_test_id("models-table").locator("tbody tr").first.locator("td").nth(4).inner_text()
    assert "年" in created and "月" in created, created
    # registry words are data to the check above, but a Chinese reader gets them in Chinese too (causal-lm, pretrain
    # and lm stood in one table beside 生成 in the next)
    counts = page.evaluate("""async () => {
      const { fmtCount } = await import('/ui/i18n.js');
      return [fmtCount(1765), fmtCount(3753), fmtCount(273000)];
    }""")
    assert counts == ["1,765", "3,753", "27.3万"], counts  # one style in one table: "3,753" stood beside "1765"
    kinds = page.get_by_test_id("models-table").locator("tbody tr td:nth-child(2)").all_inner_texts()
    assert "生成模型" in kinds and "causal-lm" not in kinds, kinds
    tasks = page.get_by_test_id("datasets-table").locator("tbody").inner_text()
    assert "语言模型" in tasks and "\tlm\t" not in tasks, tasks


@pytest.mark.parametrize("lang", ["zh-CN", "en"])
def test_no_view_overflows_a_375px_phone(page, server, lang):
    page.set_viewport_size({"width": 375, "height": 812})
    page.evaluate(f"localStorage.setItem('llmkit.lang', {json.dumps(lang)})")
    page.goto(server.base_url + "/#chat")
    assert page.evaluate("document.documentElement.lang") == lang
    page.wait_for_function("() => document.querySelector('[data-testid=model-select]').value !== ''")
    page.locator("#settings > summary").click()  # the settings fold up on a phone: open them, schema box too
    page.get_by_test_id("model-select").select_option("tiny-lm")
    page.locator("#schema-box summary").click()
    problems = [f"chat: {p}" for p in page.evaluate(OVERFLOW)]
    page.get_by_test_id("tab-dashboard").click()
    page.get_by_test_id("models-table").locator("tbody tr").first.wait_for()
    page.get_by_test_id("models-table").locator("tbody tr.pickable").first.click()
    page.get_by_test_id("model-detail").locator("h3").first.wait_for()
    problems += [f"dashboard: {p}" for p in page.evaluate(OVERFLOW)]
    assert not problems, f"{lang} at 375 px:\n" + "\n".join(problems)
    page.set_viewport_size({"width": 1280, "height": 900})


def test_the_language_switch_persists_across_a_reload(page, server):
    page.evaluate("localStorage.removeItem('llmkit.lang')")
    page.goto(server.base_url + "/#chat")
    assert page.get_by_test_id("send-button").inner_text() == "发送"  # the browser's language, nothing stored
    page.get_by_test_id("lang-select").select_option("en")
    assert page.get_by_test_id("send-button").inner_text() == "Send"  # at once, without a reload
    assert page.evaluate("document.documentElement.lang") == "en"
    page.wait_for_function("() => document.querySelector('[data-testid=model-select] option').textContent.includes('(')")
    page.reload()
    assert page.get_by_test_id("lang-select").input_value() == "en"
    assert page.get_by_test_id("tab-dashboard").inner_text() == "Dashboard"
    assert page.get_by_test_id("prompt-input").get_attribute("placeholder").startswith("Message")
    page.get_by_test_id("lang-select").select_option("zh-CN")
    page.reload()
    assert page.get_by_test_id("tab-dashboard").inner_text() == "仪表盘"
    # The choice is made from what is stored, then the browser's list, any Chinese variant reading zh-CN.
    picks = page.evaluate("""async () => {
      const { pickLocale } = await import('/ui/i18n.js');
      return [pickLocale(null, ['en-GB', 'zh-CN']), pickLocale(null, ['zh-TW']), pickLocale(null, ['fr', 'de']),
              pickLocale('zh-CN', ['en-US']), pickLocale('xx', ['zh'])];
    }""")
    assert picks == ["en", "zh-CN", "en", "zh-CN", "zh-CN"]
