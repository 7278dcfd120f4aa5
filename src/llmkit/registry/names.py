"""The one rule for the names of registered things, and names made from a file, folder or parent."""

from __future__ import annotations

import re

from llmkit.errors import UserError

RECORD_TYPES = ("dataset", "run", "model", "eval")

# The one rule for the name of anything registered: it becomes part of a folder name under the workspace,
# so no separators, no leading dot, nothing a shell or a URL would have to quote.
NAME_RULE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
NAME_RULE_TEXT = "use ASCII letters (a-z, A-Z), digits, '.', '_' and '-' (starting with a letter or digit, at most 100)"
# Evaluations are named after the model they measured, which may be a Hub id ('org/model').
NAMED_BY_USER = ("dataset", "run", "model")


def check_name(name: str, what: str, flag: str = "--name") -> str:
    """`name` when it follows NAME_RULE; else a UserError saying what is wrong and how to fix it."""
    if not isinstance(name, str) or not NAME_RULE.fullmatch(name):
        raise UserError(f"{what} name {name!r}: {NAME_RULE_TEXT}, e.g. {flag} shakespeare", param=flag.lstrip("-"))
    return name


def default_name(text: str, fallback: str = "model") -> str:
    """A registrable name made from `text` (a file, folder, Hub id or parent name): other characters become '-'."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("._-")[:100].rstrip("._-")
    return name or fallback


def given_or_default(given: str | None, derived: str, what: str = "model") -> str:
    """The --name a user gave (which must follow the rule) or a name derived from the parent's."""
    return check_name(given, what) if given else default_name(derived, fallback=what)
