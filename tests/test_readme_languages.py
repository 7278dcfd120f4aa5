"""README.md and README.zh-CN.md stay in step: the same commands, the same figures, links both ways.

The Chinese README is a translation, so its prose cannot be compared with the English; what a reader
copies or relies on can. The rules, chosen so that any faithful translation passes and any drift fails:

Commands (compared both ways, as sets):
- every line of every ``` fenced block (bash, python, usage, terminal output): lines ending in a
  backslash are joined with the next, a `#` comment (a `#` at the start of a line or after whitespace)
  is dropped — translating a comment is allowed, changing a command is not — and runs of whitespace
  become one space;
- every inline code span outside the fences whose first word, after any `VAR=value` assignments, is
  `llmkit` or `make` (a span may wrap across lines; whitespace is collapsed the same way).

Figures (compared both ways, as sets): a measured number the translation must copy, never reword.
- a number directly followed (an optional space between) by ×, %, or one of the units the README writes
  as symbols — s, ms, min, KB, MB, GB, tokens/s — which the Chinese text keeps as they are ("25 s", not
  "25 秒"); a leading sign belongs to it (+0.06 % and −0.06 % differ) and a range is one figure
  ("1.8–1.9×"); spaces are dropped and dashes read as "-", so "4.4 %", "4.4%" are the same figure, and
  so are "−1.4 %" and "-1.4 %";
- every number in a Markdown table row (the explain limits' defaults).
Numbers written as words ("about a minute") or with units a Chinese writer translates ("3 minutes",
"10 bits") are not compared: a rule that needs the prose rendered word for word would break on every
natural rewording. A figure only in the Chinese README is as wrong as one missing from it: either way
one of them is stale.

Links: the line under README.md's title points to the Chinese one, the Chinese one's first line back.
Structure: both have the same headings at the same levels in the same order, so a section added to one
has its place in the other.
"""

import re
from itertools import zip_longest
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ENGLISH = ROOT / "README.md"
CHINESE = ROOT / "README.zh-CN.md"
LINK_TO_CHINESE = "[简体中文](README.zh-CN.md) | English"
LINK_TO_ENGLISH = "[English](README.md) | 简体中文"

FENCE = re.compile(r"^```[^\n]*\n(.*?)^```[ \t]*$", re.S | re.M)
COMMENT = re.compile(r"(?:^|\s)#.*$")
INLINE_CODE = re.compile(r"`([^`]+)`")
INLINE_COMMAND = re.compile(r"(?:[A-Z_][A-Z0-9_]*=\S*\s+)*(?:llmkit|make)\s")
# A sign only where it cannot be a range's dash; a range ("1.8–1.9×") is one figure.
NUMBER = r"(?<![\w.])[-+−]?\d+(?:[.,]\d+)*(?:\s?[-–]\s?\d+(?:[.,]\d+)*)?"
FIGURE = re.compile(NUMBER + r"\s?(?:×|%|(?:s|ms|min|KB|MB|GB|tokens/s)\b)")
DASHES = str.maketrans("–−", "--")  # en dash and minus sign read as the ASCII hyphen
TABLE_NUMBER = re.compile(r"(?<![\w.])\d+(?:[.,]\d+)*(?![\w.])")
HEADING = re.compile(r"^#{1,6} .*$", re.M)


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _prose(text: str) -> str:
    """The text with its fenced blocks removed (headings and inline code live outside them)."""
    return FENCE.sub("\n", text)


def _one_space(text: str) -> str:
    return " ".join(text.split())


def commands(text: str) -> set[str]:
    found = set()
    for block in FENCE.findall(text):
        for line in block.replace("\\\n", " ").splitlines():
            command = _one_space(COMMENT.sub("", line))
            if command:
                found.add(command)
    for span in INLINE_CODE.findall(_prose(text)):
        span = _one_space(span)
        if INLINE_COMMAND.match(span + " "):
            found.add(span)
    return found


def figures(text: str) -> set[str]:
    found = {re.sub(r"\s", "", match).translate(DASHES) for match in FIGURE.findall(text)}
    for line in _prose(text).splitlines():
        if line.lstrip().startswith("|"):
            found.update(f"table:{number}" for number in TABLE_NUMBER.findall(line))
    return found


def headings(text: str) -> list[str]:
    return HEADING.findall(_prose(text))


def _drift(what: str, english: set[str], chinese: set[str]) -> str:
    lines = [f"README.md and README.zh-CN.md differ in {what}; copy each verbatim into the other file:"]
    for label, missing in (("missing from README.zh-CN.md", english - chinese),
                           ("missing from README.md", chinese - english)):
        lines += [f"  {label}:"] + [f"    {item}" for item in sorted(missing)]
    return "\n".join(lines)


@pytest.fixture(scope="module")
def readmes() -> tuple[str, str]:
    return _read(ENGLISH), _read(CHINESE)


def test_both_readmes_hold_the_same_commands(readmes):
    english, chinese = (commands(text) for text in readmes)
    assert len(english) > 50  # the extraction still finds the README's commands
    assert english == chinese, _drift("commands", english, chinese)


def test_both_readmes_hold_the_same_figures(readmes):
    english, chinese = (figures(text) for text in readmes)
    assert len(english) > 30  # the rule still finds the README's figures
    assert english == chinese, _drift("figures", english, chinese)


def test_each_readme_links_to_the_other(readmes):
    english, chinese = (text.splitlines() for text in readmes)
    assert english[0] == "# llmkit" and LINK_TO_CHINESE in english[1:3], (
        f"README.md: put the line {LINK_TO_CHINESE!r} directly under the '# llmkit' title")
    assert chinese[0] == LINK_TO_ENGLISH, (
        f"README.zh-CN.md: its first line must be {LINK_TO_ENGLISH!r}")


def test_both_readmes_have_the_same_heading_levels_in_order(readmes):
    english, chinese = (headings(text) for text in readmes)
    side_by_side = "\n".join(f"  {a or '-'}  |  {b or '-'}" for a, b in zip_longest(english, chinese))
    assert [h.split()[0] for h in english] == [h.split()[0] for h in chinese], (
        "README.md and README.zh-CN.md differ in their headings' number or levels; add or move the "
        f"section so both follow the same order:\n{side_by_side}")
