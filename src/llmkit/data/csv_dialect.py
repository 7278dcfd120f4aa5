"""The separator of a .csv, found from its first rows: `,`, or `;` as Excel writes where `,` is the decimal mark.

Why not csv.Sniffer: on Excel's `a;b;4,5` rows it answers `,` (the decimal commas are as regular as the
separators), and on a one-column file of prose it raises "Could not determine delimiter". Here a separator counts
only if it cuts the rows into equal numbers of cells, and the comma wins ties.
"""

from __future__ import annotations

import csv
import io

SNIFF_CHARS = 64 * 1024  # the start of a .csv looked at to find its separator
DELIMITERS = (",", ";", "\t", "|")
DELIMITER_NAMES = {",": "commas", ";": "semicolons", "|": "bars"}


def csv_delimiter(sample: str) -> tuple[str, int]:
    """The separator of a .csv from its first rows, and 1 when its first line is Excel's `sep=;` hint (else 0).

    Excel in much of Europe saves "CSV" with `;` between cells, since `,` is the decimal mark there: read with
    commas, "text;label;4,5" became a text "text;label;4" with the label "5". The separator chosen is the one that
    cuts the first row into two or more cells and the most of the other rows into as many; ties go to the comma.
    """
    first = sample[:line_end(sample)].strip("\r\n")
    if first.lower().startswith("sep=") and len(first) == 5:
        return first[4], 1
    scores = {}
    for candidate in DELIMITERS:
        rows = _leading_rows(csv.reader(io.StringIO(sample, newline=""), delimiter=candidate))
        scores[candidate] = sum(len(r) == len(rows[0]) for r in rows) / len(rows) if rows and len(rows[0]) >= 2 else -1
    best = max(DELIMITERS[1:], key=lambda c: scores[c])
    # Another separator only when it cuts three rows in four alike: a one-column file of texts, the first holding a
    # ';', stays one column.
    return (best if scores[best] >= 0.75 and scores[best] > scores[","] else ","), 0


def _leading_rows(reader) -> list[list[str]]:
    """The non-blank rows a reader gives before its first error (a quoted cell the sample cuts in two)."""
    rows = []
    while True:
        try:
            row = next(reader)
        except (StopIteration, csv.Error):
            return rows
        if any(cell.strip() for cell in row):
            rows.append(row)


def line_end(text: str) -> int:
    n = text.find("\n")
    return len(text) if n < 0 else n + 1
