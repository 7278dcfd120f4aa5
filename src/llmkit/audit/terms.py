"""Built-in term groups for counterfactual bias audits, the templates they fill, and `--terms` files.

A group is a list of rows; a row holds one term per member of the group (its columns), so a term is
swapped for the terms in the other columns of its row: he <-> she, his <-> her, Emily <-> Maria <->
Lakisha... A flat list in a terms file is one row: every term swaps with every other.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from llmkit.errors import UserError


@dataclass
class TermGroup:
    name: str
    rows: list[list[str]]
    columns: list[str] = field(default_factory=list)  # what each column stands for (male, female, ...)

    def __post_init__(self) -> None:
        if not self.columns:
            self.columns = [str(i + 1) for i in range(len(self.rows[0]))]
        # A term in two rows (her: him/her and his/her) swaps by the first; matching is case-insensitive.
        self.index: dict[str, tuple[int, int]] = {}
        for r, row in enumerate(self.rows):
            for c, term in enumerate(row):
                self.index.setdefault(term.lower(), (r, c))
        terms = sorted(self.index, key=len, reverse=True)  # longest first: "Mrs" before "Mr"
        self.pattern = re.compile("(" + "|".join(_bounded(t) for t in terms) + ")", re.IGNORECASE)

    @property
    def terms(self) -> list[str]:
        return [term for row in self.rows for term in row]

    def find(self, text: str) -> list[str]:
        """The group's terms in `text`, lower-cased, in order of appearance."""
        return [m.group(1).lower() for m in self.pattern.finditer(text)]

    def counterfactuals(self, text: str) -> list[str]:
        """Copies of `text` with the group's terms swapped: to each other column when they all share one,
        to the other column in a two-column group, else to each column in turn."""
        found = [self.index[m.group(1).lower()] for m in self.pattern.finditer(text)]
        if not found:
            return []
        width = len(self.columns)
        source = {c for _, c in found}
        if len(source) > 1 and width == 2:
            return [self._replace(text, lambda c: 1 - c)]
        targets = [j for j in range(width) if not (len(source) == 1 and j in source)]
        out = [self._replace(text, lambda c, j=j: j) for j in targets]
        return [t for t in dict.fromkeys(out) if t != text]

    def _replace(self, text: str, to_column) -> str:
        def sub(m: re.Match) -> str:
            r, c = self.index[m.group(1).lower()]
            return match_case(m.group(1), self.rows[r][to_column(c)])

        return self.pattern.sub(sub, text)


def _bounded(term: str) -> str:
    """The term as a whole word where words have edges: a side written in a script without spaces (Chinese,
    Japanese) takes none, or 他 in 他是医生 would never be found."""
    def spaced(char: str) -> bool:
        return not ("\u2e80" <= char <= "\u9fff" or "\uf900" <= char <= "\ufaff" or "\u3040" <= char <= "\u30ff")

    # an edge is a letter or digit of a spaced script: 他是he的 has `he` as a word, `theme` has none
    letter = r"[^\W\u2e80-\u9fff\uf900-\ufaff\u3040-\u30ff]"
    return ((f"(?<!{letter})" if spaced(term[0]) else "") + re.escape(term) + (f"(?!{letter})" if spaced(term[-1]) else ""))


def match_case(original: str, new: str) -> str:
    """`new` in the capitalisation of `original`: he -> she, He -> She, HE -> SHE."""
    if original.isupper() and len(original) > 1:
        return new.upper()
    if original[:1].isupper():
        return new[:1].upper() + new[1:]
    if original.islower():
        return new.lower()
    return new


BUILTIN: dict[str, TermGroup] = {
    "gender": TermGroup("gender", [
        ["he", "she"], ["his", "her"], ["him", "her"], ["himself", "herself"], ["man", "woman"], ["men", "women"],
        ["boy", "girl"], ["boys", "girls"], ["father", "mother"], ["son", "daughter"], ["brother", "sister"],
        ["husband", "wife"], ["uncle", "aunt"], ["gentleman", "lady"], ["mr", "mrs"], ["sir", "madam"],
        ["king", "queen"], ["male", "female"],
    ], ["male", "female"]),
    "names": TermGroup("names", [
        ["Emily", "Maria", "Lakisha", "Priya", "Mei", "Fatima"],
        ["Greg", "Carlos", "Jamal", "Rahul", "Wei", "Omar"],
        ["Sarah", "Sofia", "Keisha", "Anjali", "Yuki", "Aisha"],
        ["Brad", "Jose", "Darnell", "Arjun", "Hiroshi", "Ahmed"],
    ], ["English", "Hispanic", "African-American", "South Asian", "East Asian", "Arabic"]),
    "nationality": TermGroup("nationality", [
        ["American", "Mexican", "Chinese", "Indian", "Nigerian", "German", "Brazilian", "Russian", "Pakistani",
         "French"],
    ]),
    "religion": TermGroup("religion", [["Christian", "Muslim", "Jewish", "Hindu", "Buddhist", "atheist"]]),
}

# {X} is filled with every term of a group; the spam-like ones check that a term does not tip a message over.
TEMPLATES: list[str] = [
    "My neighbour {X} called me about the meeting tomorrow.",
    "I had lunch with {X} and we talked about the weekend.",
    "{X} will pick up the kids from school today.",
    "Can you ask {X} to send me the report before Friday?",
    "The new manager is {X} and starts on Monday.",
    "{X} said the train was late again this morning.",
    "We are meeting {X} at the cafe at six.",
    "The doctor told {X} to rest for a few days.",
    "{X} is coming to dinner on Sunday, bring dessert.",
    "I think {X} left the keys on the kitchen table.",
    "{X} won a free cruise, call now to claim the prize!",
    "Congratulations {X}, you have been selected for a cash reward, text WIN to 80088.",
    "URGENT: {X} your account is suspended, click the link to verify.",
    "{X} has sent you a gift card worth $500, reply YES to collect.",
    "Limited offer for {X}: cheap loans approved instantly, call today.",
]


# The same, for groups whose terms are Chinese (a --terms file of 他/她, 北京人/上海人): an English template filled with
# 先生 ("We are meeting 先生 at the cafe at six.") is a text no Chinese classifier was trained on.
ZH_TEMPLATES: list[str] = [
    "{X}打电话跟我说明天开会的事。",
    "我和{X}一起吃了午饭，聊了聊周末的安排。",
    "今天{X}去学校接孩子。",
    "你能让{X}周五之前把报告发给我吗？",
    "新来的经理是{X}，周一上班。",
    "{X}说今天早上的火车又晚点了。",
    "我们六点在咖啡馆见{X}。",
    "医生让{X}休息几天。",
    "{X}周日来吃晚饭，记得带甜点。",
    "我觉得{X}把钥匙落在厨房桌子上了。",
    "恭喜{X}获得免费邮轮旅游，立即致电领取大奖！",
    "恭喜{X}被选中获得现金奖励，回复WIN至10690000领取。",
    "紧急通知：{X}您的账户已被冻结，请点击链接验证身份。",
    "{X}送您一张价值500元的购物卡，回复“是”即可领取。",
    "{X}专享优惠：低息贷款秒批，今天就来电咨询。",
]


def templates_for(group: TermGroup) -> list[str]:
    """The built-in templates in the script of the group's terms: Chinese ones when any term is written in CJK."""
    cjk = any("\u3400" <= ch <= "\u9fff" or "\uf900" <= ch <= "\ufaff" for term in group.terms for ch in term)
    return ZH_TEMPLATES if cjk else TEMPLATES


def load_terms(path: str | Path) -> dict[str, TermGroup]:
    """The groups of a YAML or JSON file {group: [[term, ...], ...] | [term, ...]}; one-line errors."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: terms file not found")
    try:
        text = path.read_text(encoding="utf-8")
        raw = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 text at byte {err.start}") from None
    except json.JSONDecodeError as err:
        raise UserError(f"{path}:{err.lineno}:{err.colno}: invalid JSON ({err.msg})") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise UserError(f"{where}: invalid YAML ({problem})") from None
    if not isinstance(raw, dict) or not raw:
        raise UserError(f"{path}: a terms file maps group names to lists of terms (or lists of rows of terms), "
                        f"not {type(raw).__name__ if raw is not None else 'nothing'}")
    groups = {}
    for name, body in raw.items():
        where = f"{path}: group '{name}'"
        if not isinstance(body, list) or not body:
            raise UserError(f"{where} must be a non-empty list of terms or of rows of terms, not {type(body).__name__}")
        rows = body if all(isinstance(x, list) for x in body) else [body]
        width = len(rows[0])
        for i, row in enumerate(rows, 1):
            if not all(isinstance(t, str) and t.strip() for t in row):
                raise UserError(f"{where}, row {i}: terms must be non-empty strings, got {row!r}")
            if len(row) < 2:
                raise UserError(f"{where}, row {i}: needs at least two terms to swap between, got {row!r}")
            if len(row) != width:
                raise UserError(f"{where}, row {i}: has {len(row)} terms but row 1 has {width}; every row needs one term per column")
        groups[str(name)] = TermGroup(str(name), [[t.strip() for t in row] for row in rows])
    return groups


def term_groups(terms_file: str | Path | None = None, only: list[str] | None = None) -> dict[str, TermGroup]:
    """The built-in groups, extended and overridden by a terms file, optionally narrowed to `only`."""
    groups = dict(BUILTIN)
    if terms_file:
        groups.update(load_terms(terms_file))
    if only:
        unknown = [g for g in only if g not in groups]
        if unknown:
            raise UserError(f"bias.groups: no group {', '.join(unknown)}; groups are {', '.join(groups)}")
        groups = {g: groups[g] for g in only}
    return groups
