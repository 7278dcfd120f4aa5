"""Ollama's prompt rendering, enough of it to check llmkit's Modelfile templates without Ollama or Go.

Two parts, both read from Ollama's source (template/template.go, `Execute` and `collate`): a template that
names `.Messages` gets `System` (every system message joined) *and* `Messages` (system messages kept, consecutive
messages of one role merged); and the subset of Go's text/template those templates use: `{{-`/`-}}` trimming,
fields (`.Role`, `$.System`, `$m.Content`), variables (`:=`, `=`), `range` (with `$i, $m :=`), `if`/`else if`/
`else`/`end`, `eq`, `and`, and string literals. Anything else raises, so a template outside the subset cannot
pass unchecked."""

from __future__ import annotations

import re

_ACTION = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.S)


def ollama_render(template: str, messages: list[dict], system: str | None = None) -> str:
    """The prompt Ollama builds for a chat request: the Modelfile's SYSTEM first when the request has none."""
    if system and not any(m["role"] == "system" for m in messages):
        messages = [{"role": "system", "content": system}, *messages]
    collated: list[dict] = []
    for m in messages:
        if collated and collated[-1]["role"] == m["role"] and m["role"] != "tool":
            collated[-1] = {**collated[-1], "content": collated[-1]["content"] + "\n\n" + m["content"]}
        else:
            collated.append(dict(m))
    root = {"System": "\n\n".join(m["content"] for m in messages if m["role"] == "system"),
            "Messages": [{"Role": m["role"], "Content": m["content"]} for m in collated]}
    tokens = _lex(template)
    nodes, rest = _parse(tokens, 0)
    assert rest == len(tokens), "unbalanced {{ end }}"
    out: list[str] = []
    _run(nodes, root, {"$": root}, out)
    return "".join(out)


def _lex(template: str) -> list[tuple[str, str]]:
    tokens, pos = [], 0
    for m in _ACTION.finditer(template):
        text = template[pos:m.start()]
        if m.group(1):
            text = text.rstrip(" \t\r\n")
        if tokens and tokens[-1][0] == "trim":
            tokens.pop()
            text = text.lstrip(" \t\r\n")
        tokens.append(("text", text))
        tokens.append(("action", m.group(2)))
        if m.group(3):
            tokens.append(("trim", ""))
        pos = m.end()
    text = template[pos:]
    if tokens and tokens[-1][0] == "trim":
        tokens.pop()
        text = text.lstrip(" \t\r\n")
    tokens.append(("text", text))
    return tokens


def _parse(tokens, i):
    """(nodes, index after them) up to an `end`/`else` (left for the caller)."""
    nodes = []
    while i < len(tokens):
        kind, body = tokens[i]
        if kind == "text":
            nodes.append(("text", body))
            i += 1
            continue
        word = body.split(" ", 1)[0]
        if word in ("end", "else"):
            return nodes, i
        if word in ("range", "if"):
            branches, i = [], i
            cond = body[len(word):].strip()
            while True:
                block, i = _parse(tokens, i + 1)
                branches.append((cond, block))
                closing = tokens[i][1]
                if closing == "end":
                    break
                cond = closing[len("else"):].strip()
                cond = cond[len("if"):].strip() if cond.startswith("if") else None
            nodes.append((word, branches))
            i += 1
            continue
        nodes.append(("action", body))
        i += 1
    return nodes, i


def _run(nodes, dot, scope, out) -> None:
    for kind, body in nodes:
        if kind == "text":
            out.append(body)
        elif kind == "action":
            m = re.fullmatch(r"(\$\w+)\s*(:?=)\s*(.+)", body)
            if m:
                scope[m.group(1)] = _eval(m.group(3), dot, scope)
            else:
                out.append(str(_eval(body, dot, scope)))
        elif kind == "if":
            for cond, block in body:
                if cond is None or _eval(cond, dot, scope):
                    _run(block, dot, scope, out)
                    break
        elif kind == "range":
            (head, block), *other = body
            assert not other, "range ... else is not in the subset"
            m = re.fullmatch(r"(?:(\$\w+)\s*,\s*)?(\$\w+)\s*:=\s*(.+)", head)
            items = _eval(m.group(3) if m else head, dot, scope)
            for index, item in enumerate(items):
                if m:
                    if m.group(1):
                        scope[m.group(1)] = index
                    scope[m.group(2)] = item
                _run(block, item, scope, out)
        else:
            raise AssertionError(kind)


def _eval(expr: str, dot, scope):
    words = re.findall(r'"(?:[^"\\]|\\.)*"|\S+', expr.strip())
    if words[0] in ("eq", "and"):
        args = [_value(w, dot, scope) for w in words[1:]]
        if words[0] == "eq":
            return args[0] == args[1]
        return all(args) and args[-1]
    assert len(words) == 1, f"not in the subset: {expr}"
    return _value(words[0], dot, scope)


def _value(word: str, dot, scope):
    if word.startswith('"'):
        return word[1:-1].encode().decode("unicode_escape")
    if word.startswith("$"):
        head, _, field = word.partition(".")
        base = scope[head]
        return base[field] if field else base
    if word == ".":
        return dot
    if word.startswith("."):
        return dot[word[1:]]
    raise AssertionError(f"not in the subset: {word}")
