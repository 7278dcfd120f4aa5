"""Raw rows to task records: the part of ingest that knows about tasks, not files.

Readers in `ingest.py` turn every file format into dict rows (a CSV row, a JSON object, a Parquet
row); a `RowFormatter` turns one row into the records of the task: `lm` and `classify` need a text
(and a label) field, `chat` recognizes the common conversation layouts (`chat_layouts.py`) so that users do not have to
convert OpenAssistant, ShareGPT or Alpaca exports by hand, and `preference` reads pairs and rated
completions in the layouts `preference.py` lists. A row that cannot become a record raises
`BadRecord`, which the caller either stops on or counts (--skip-bad).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from llmkit.data.chat_layouts import chat_messages
from llmkit.data.preference import PreferenceError, preference_record
from llmkit.data.record_fields import BadRecord, fields_of, find_field
from llmkit.errors import UserError

TASKS = ("lm", "chat", "classify", "preference")
# Tried in order when --text-field / --label-field is not given; Chinese tables name their columns in Chinese.
TEXT_NAMES = ("text", "content", "文本", "内容", "正文", "句子", "文字")
LABEL_NAMES = ("label", "标签", "类别", "分类", "类型")

_NUMERIC = re.compile(r"\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$")
# An identifier: one ASCII word of letters, digits, '-' and '_' holding a digit (a UUID, a hash, "q_0017").
# Such a field can be longer than the text of a short record (a UUID has 36 characters, a quatrain 24),
# so it is never guessed as the text.
_ID_LIKE = re.compile(r"\s*(?=[A-Za-z_-]*\d)[0-9A-Za-z_-]+\s*$")
SAMPLE_ROWS = 32  # rows looked at to guess the text field when --text-field is not given


# What a Chinese input method types for JSON's punctuation; json's own message ("Expecting ',' delimiter") does not
# say that the character there looks right and is not.
_FULL_WIDTH_JSON = {"，": ",", "：": ":", "“": '"', "”": '"', "＂": '"', "｛": "{", "｝": "}", "［": "[", "］": "]"}


def full_width_hint(text: str, pos: int) -> str:
    """'; ...' naming the full-width punctuation at text[pos] where JSON failed, else ''."""
    char = text[pos] if 0 <= pos < len(text) else ""
    if char not in _FULL_WIDTH_JSON:
        return ""
    return (f"; the '{char}' there is full-width (a Chinese input method's): JSON needs the ASCII "
            f"'{_FULL_WIDTH_JSON[char]}' outside strings")


def _is_text(value: Any) -> bool:
    return isinstance(value, str) or (
        isinstance(value, list) and bool(value) and all(isinstance(v, str) for v in value)
    )


def _as_text(value: Any) -> str:
    # Poems and stanzas come as lists of lines (chinese-poetry's `paragraphs`): one line each.
    return "\n".join(value) if isinstance(value, list) else value


def _candidate(value: Any) -> bool:
    if isinstance(value, str):
        return not _NUMERIC.match(value) and not _ID_LIKE.match(value)
    return _is_text(value)


def _longest_text_field(rows: list[dict], label_field: str | None) -> str | None:
    """`text`/`content` when the rows have one, else the field with the most text over `rows`.

    Lists of strings (poem lines, paragraphs) count their joined length; numbers and identifiers are
    never the text. Keys are taken in the first row's order, so ties go to the earlier field.
    """
    first = rows[0]
    label = find_field(first, label_field) if label_field else None
    for name in TEXT_NAMES:
        key = find_field(first, name)
        if key is not None and key != label:
            return key
    totals: dict[str, int] = {}
    for row in rows:
        for key, value in row.items():
            if key != label and _candidate(value):
                totals[key] = totals.get(key, 0) + len(_as_text(value).strip())
    best = max(totals, key=lambda k: totals[k], default=None)
    return best if best is not None and totals[best] > 0 else None


def guess_columns(rows: list[list[str]]) -> tuple[str, str | None]:
    """Text and label column indexes of a header-less table, from a sample of its rows.

    The text is the long column and the label the short one, as in SMS Spam's `ham<TAB>text...`.
    """
    width = max(len(row) for row in rows)
    lengths = [sum(len(row[i]) for row in rows if i < len(row)) for i in range(width)]
    text = max(range(width), key=lambda i: lengths[i])
    others = [i for i in range(width) if i != text]
    label = min(others, key=lambda i: lengths[i]) if others else None
    return str(text), None if label is None else str(label)


def default_text_column(columns: list[str], string_columns: list[str], label: str | None) -> str | None:
    """The text column of a typed table (Parquet) when --text-field is not given."""
    names = [c for c in columns if c != label]
    for name in TEXT_NAMES:
        found = find_field(names, name)
        if found is not None:
            return found
    return next((c for c in string_columns if c in names), None)


class RowFormatter:
    """Turns the rows of one file into records; resolves default field names once per file.

    Resolving once keeps a file consistent: a JSON Lines file whose first row has `text` and a later
    row only `content` gets that later row reported, not silently read from another field.
    """

    def __init__(self, path: str, task: str, text_field: str | None, label_field: str | None):
        if task not in TASKS:
            raise UserError(f"unknown task '{task}'; tasks: {', '.join(TASKS)}", param="data.task")
        self.path = path
        self.task = task
        self.text_field = text_field
        self.label_field = label_field if label_field is not None else (LABEL_NAMES[0] if task == "classify" else None)
        self._explicit_label = label_field is not None
        self._label_chosen = self._explicit_label  # the default is chosen once per file, from its columns

    def choose_label(self, keys) -> None:
        """Without --label-field: the first of LABEL_NAMES among the file's columns (or first row's fields)."""
        if self._label_chosen or self.task != "classify":
            return
        self._label_chosen = True
        self.label_field = next((name for name in LABEL_NAMES if find_field(keys, name) is not None), LABEL_NAMES[0])

    def set_defaults(self, text: str | None, label: str | None) -> None:
        """Column guesses from a reader of header-less tables; given flags still win."""
        if self.text_field is None:
            self.text_field = text
        if not self._explicit_label and self.task == "classify" and label is not None:
            self.label_field = label
            self._label_chosen = True

    # -- schema-level checks (CSV header, Parquet schema): a wrong name is a mistake for the whole file

    def check_columns(self, columns: list[str], note: str = "") -> None:
        """Map index names ("0", "1") onto columns and fail at once on a missing column."""
        if self.task in ("chat", "preference"):
            return
        if self.text_field is not None:
            self.text_field = self._column(columns, self.text_field, "--text-field", note)
        if self.task == "classify":
            self.choose_label(columns)
            self.label_field = self._column(columns, self.label_field, "--label-field", note)

    def _column(self, columns: list[str], name: str, flag: str, note: str) -> str:
        found = find_field(columns, name)
        if found is None and name.isdigit() and int(name) < len(columns):
            found = columns[int(name)]
        if found is None:
            how = " with a column index" if note else ""
            raise UserError(f"{self.path}: no column '{name}' ({note}columns: {fields_of(columns)}); pass {flag}{how}")
        return found

    # -- rows

    def __call__(self, row: Any, line: int | str) -> list[dict]:
        where = f"{self.path}:{line}"
        if not isinstance(row, dict):
            raise BadRecord(f"{where}: expected an object with fields, got {type(row).__name__}")
        if self.task == "chat":
            return [{"messages": m, "source": where} for m in chat_messages(row, where, self.text_field)]
        if self.task == "preference":
            try:
                return [{**preference_record(row), "source": where}]
            except PreferenceError as err:
                raise BadRecord(f"{where}: {err.message}", err.reason) from None
        text = self._text(row, where)
        if self.task == "lm":
            return [{"text": text, "source": where}]
        return [{"text": text, "label": self._label(row, where), "source": where}]

    def _text(self, row: dict, where: str) -> str:
        if self.text_field is None:
            self.text_field = self._default_text_field(row, where)
        key = find_field(row, self.text_field)
        if key is None:
            raise BadRecord(f"{where}: no field '{self.text_field}' (fields: {fields_of(row)}); pass --text-field")
        value = row[key]
        if value is None or value == "" or value == []:
            raise BadRecord(f"{where}: empty text in field '{key}'")
        if not _is_text(value):
            raise BadRecord(f"{where}: field '{key}' is {type(value).__name__}, not text; pass --text-field")
        text = _as_text(value)
        if not text.strip():
            raise BadRecord(f"{where}: empty text in field '{key}'")
        return text

    def guess_text_field(self, rows: list[Any]) -> None:
        """Choose the default text field from the first rows of a file, not from its first row alone.

        One short record decides badly (its id may be longer than its poem); summed over a sample the
        text is what is long. Called before the rows are read; a given --text-field is kept.
        """
        if self.text_field is not None or self.task in ("chat", "preference"):
            return
        sample = [r for r in rows if isinstance(r, dict)]
        if sample:
            self.choose_label(sample[0])
            self.text_field = _longest_text_field(sample, self.label_field)

    def _default_text_field(self, row: dict, where: str) -> str:
        found = _longest_text_field([row], self.label_field)
        if found is not None:
            return found
        raise BadRecord(f"{where}: no text field (fields: {fields_of(row)}); pass --text-field")

    def _label(self, row: dict, where: str) -> str:
        self.choose_label(row)
        key = find_field(row, self.label_field)
        if key is None:
            raise BadRecord(f"{where}: no field '{self.label_field}' (fields: {fields_of(row)}); pass --label-field")
        value = row[key]
        if value is None:  # a null in JSON, an empty cell in Parquet: no label, not a label of type NoneType
            raise BadRecord(f"{where}: empty label in field '{key}'")
        if isinstance(value, str):
            label = value.strip()
        elif isinstance(value, bool):
            label = str(value).lower()  # as JSON spells it
        elif isinstance(value, float) and value.is_integer():
            label = str(int(value))  # pandas turns int labels with gaps into floats
        elif isinstance(value, int | float):
            label = str(value)
        else:
            raise BadRecord(f"{where}: label field '{key}' is {type(value).__name__}, not a string or number")
        if not label:
            raise BadRecord(f"{where}: empty label in field '{key}'")
        return label


def jsonl_objects(file: Path, fields: tuple[str, ...]) -> list[dict]:
    """The objects of a small JSONL file (blank lines skipped), each with a string in every one of `fields`;
    a bad line is a UserError naming file:line."""
    rows = []
    try:  # utf-8-sig: the BOM a Windows editor writes is no JSON
        lines = file.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as err:
        raise UserError(f"{file}: not UTF-8 text at byte {err.start}; save it as UTF-8") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise UserError(f"{file}:{n}: invalid JSON ({err.msg} at column {err.colno}){full_width_hint(line, err.pos)}") from None
        if not isinstance(row, dict) or not all(isinstance(row.get(f), str) for f in fields):
            names = " and ".join(f"'{f}'" for f in fields)
            what = f"{names} strings" if len(fields) > 1 else f"a {names} string"
            raise UserError(f"{file}:{n}: expected an object with {what}")
        rows.append(row)
    return rows
