"""What readers of raw rows share: the error a row that cannot become a record raises, and finding a field by name
the way CSV headers and JSON keys are written (case aside)."""

from __future__ import annotations


class BadRecord(Exception):
    """One row that cannot become a record; the message already says where and why."""

    def __init__(self, message: str, reason: str = "invalid"):
        super().__init__(message)
        self.message = message
        self.reason = reason  # counted by reason under --skip-bad (preference rows say which rule they broke)


def find_field(keys, name: str) -> str | None:
    """`name` among `keys`, falling back to a case-insensitive match (CSV headers say `Text`)."""
    if name in keys:
        return name
    low = name.lower()
    return next((k for k in keys if isinstance(k, str) and k.lower() == low), None)


def fields_of(keys) -> str:
    """The fields of a row, for a message saying which it has."""
    return ", ".join(str(k) for k in keys) or "none"
