"""A top-level JSON array read one element at a time (a .json input file can be larger than memory)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from llmkit.data.formats import BadRecord, full_width_hint
from llmkit.errors import UserError

_CHUNK = 1 << 16
_WS = re.compile(r"[ \t\n\r]*")


class JsonArray:
    """The elements of a top-level JSON array one at a time, each with the line it starts on.

    json.load would hold the whole file and all its objects; this holds one element plus a chunk.
    A syntax error cannot be skipped (there is no way to find the next element), so it always raises.
    """

    def __init__(self, path: Path, stream):
        self.path, self.stream = path, stream
        self.buf, self.pos, self.eof = "", 0, False
        self.line, self.counted = 1, 0  # line number of buf[counted]
        self.decoder = json.JSONDecoder()

    def _more(self, size: int = 0) -> None:
        self._count()
        data = self.stream.read(size or _CHUNK)
        self.eof = not data
        self.buf, self.pos, self.counted = self.buf[self.pos:] + data, 0, 0

    def _count(self) -> int:
        self.line += self.buf.count("\n", self.counted, self.pos)
        self.counted = self.pos
        return self.line

    def _peek(self) -> str:
        while True:
            self.pos = _WS.match(self.buf, self.pos).end()
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if self.eof:
                return ""
            self._more()

    def _error(self, pos: int, reason: str) -> UserError:
        line = self._count() + self.buf.count("\n", self.pos, pos)
        return UserError(f"{self.path}:{line}: invalid JSON ({reason}){full_width_hint(self.buf, pos)}")

    def _value(self) -> Any:
        size = _CHUNK
        while True:
            try:
                value, end = self.decoder.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as err:
                # Failing at the end of the buffer (or inside a long string) may just mean the value
                # goes on in the next chunk; failing earlier is a real syntax error.
                cut = err.pos >= len(self.buf) - 16 or err.msg.startswith("Unterminated string")
                if self.eof or not cut:
                    raise self._error(err.pos, err.msg) from None
            else:
                if end < len(self.buf) or self.eof:  # a number at the very end may have more digits
                    self.pos = end
                    return value
            self._more(size)
            size *= 2  # doubling keeps one huge element linear, not quadratic

    def rows(self):
        first = self._peek()
        if not first:
            yield 1, BadRecord(f"{self.path}: empty file")
            return
        if first != "[":  # a single object is one record
            line = self._count()
            yield line, self._value()
        else:
            self.pos += 1
            if self._peek() == "]":
                self.pos += 1
            else:
                while True:
                    self._peek()
                    line = self._count()
                    yield line, self._value()
                    c = self._peek()
                    self.pos += 1
                    if c == "]":
                        break
                    if c != ",":
                        raise self._error(self.pos - 1, "Expecting ',' delimiter" if c else "missing ']' at the end")
        if self._peek():
            raise self._error(self.pos, "extra data after the top-level value")
