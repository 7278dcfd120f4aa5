"""Reading raw input files into normalized records, streaming.

`prepare` feeds whatever a user has lying around (a folder of .txt, a JSON Lines export, a CSV with
or without a header, Parquet, any of them gzipped) into the same record stream, so the rest of the
data stage never looks at file formats. Every reader is a generator over bounded chunks: memory
depends on the largest record, not the size of the input. Mistakes in the input come back as a
`UserError` naming the file and line; with `skip_bad` record-level problems are counted instead.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import json
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import chain, islice
from pathlib import Path
from typing import Any

from llmkit.data.csv_dialect import DELIMITER_NAMES, SNIFF_CHARS, csv_delimiter, line_end
from llmkit.data.discover import SUPPORTED, expand_inputs, file_format
from llmkit.data.formats import (
    SAMPLE_ROWS,
    BadRecord,
    RowFormatter,
    default_text_column,
    full_width_hint,
    guess_columns,
)
from llmkit.data.json_array import JsonArray
from llmkit.errors import UserError

DOC_SPLITS = ("file", "blank-line", "line")
MAX_BAD_EXAMPLES = 5
_SNIFF_ROWS = 50  # header-less tables: rows looked at to tell the label column from the text column
# First-row cells that mark a CSV header (besides the field names the user asked for).
_HEADER_NAMES = {"text", "label", "labels", "message", "content", "sentence", "review", "document", "body",
                 "class", "category", "instruction", "input", "output", "response", "prompt", "messages",
                 # the same in Chinese: a header of 文本,类别 was read as a record and its label as a class
                 "文本", "内容", "正文", "句子", "文字", "标签", "类别", "分类", "类型", "消息", "评论", "问题", "回答",
                 "指令", "输入", "输出"}


@dataclass
class IngestStats:
    """Counters filled while `iter_records` runs, for the prepare report."""

    files: int = 0
    bytes: int = 0  # on disk, so compressed size for .gz
    rows: int = 0  # records yielded
    bad: int = 0  # rows skipped because of skip_bad
    bad_examples: list[str] = field(default_factory=list)  # the first few skip messages
    bad_reasons: Counter = field(default_factory=Counter)  # rows skipped, by BadRecord.reason
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason) for files not read


# -- records ---------------------------------------------------------------------------------------


def iter_records(
    inputs: list[str],
    *,
    task: str,
    text_field: str | None = None,
    label_field: str | None = None,
    doc_split: str = "file",
    encoding: str = "utf-8",
    skip_bad: bool = False,
    stats: IngestStats | None = None,
    include: Iterable[str] = (),
    exclude: Iterable[str] = (),
) -> Iterator[dict]:
    """Records of `task` from every input file, in file order; see `formats.py` for their shape."""
    if doc_split not in DOC_SPLITS:
        raise UserError(f"unknown doc split '{doc_split}'; choose from {', '.join(DOC_SPLITS)}", param="data.doc_split")
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise UserError(f"unknown encoding '{encoding}'; e.g. utf-8, latin-1, gbk", param="data.encoding") from None
    stats = stats if stats is not None else IngestStats()
    named = {Path(item).expanduser() for item in inputs}
    for path in expand_inputs(inputs, include, exclude, stats.skipped):
        kind = file_format(path)
        fmt = RowFormatter(str(path), task, text_field, label_field)
        stats.files += 1
        stats.bytes += path.stat().st_size
        if kind == "txt":
            if task != "lm":
                raise UserError(f"{path}: .txt files hold plain text, which suits --task lm only; --task {task} "
                                "needs .jsonl, .json, .csv, .tsv or .parquet", param="data.task")
            fmt.text_field = "text"
            rows: Iterator[tuple[Any, Any]] = _txt_rows(path, encoding, doc_split)
        elif kind == "jsonl":
            rows = _jsonl_rows(path, encoding)
        elif kind == "json":
            rows = _json_rows(path, encoding)
        elif kind in ("csv", "tsv"):
            rows = _csv_rows(path, encoding, fmt, delimiter="\t" if kind == "tsv" else None)
        else:
            rows = _parquet_rows(path, fmt)
        if path not in named:  # a file a folder or glob brought in; one named is read or stops the run as before
            rows = _file_errors(rows, path, skip_bad, stats)
        if kind in ("jsonl", "json"):
            rows = _with_text_field_guess(rows, fmt)
        for line, row in rows:
            try:
                if isinstance(row, BadRecord):
                    raise row
                records = fmt(row, line)
            except BadRecord as bad:
                if not skip_bad:
                    raise UserError(bad.message) from None
                stats.bad += 1
                stats.bad_reasons[bad.reason] += 1
                if len(stats.bad_examples) < MAX_BAD_EXAMPLES:
                    stats.bad_examples.append(bad.message)
                continue
            for record in records:
                stats.rows += 1
                yield record


def _file_errors(rows: Iterator[tuple[Any, Any]], path: Path, skip_bad: bool, stats: IngestStats):
    """`rows` of a file found in a folder or by a glob; when it cannot be read (binary, another encoding, broken gzip
    or Parquet) it is skipped and listed under --skip-bad, else the run stops saying how to leave it out."""
    n = 0
    try:
        for item in rows:
            n += 1
            yield item
    except UserError as err:
        if not skip_bad:
            raise UserError(f"{err.message} (to leave the file out: --exclude '{path.name}', or --skip-bad to skip "
                            "every unreadable file)", param=err.param) from None
        after = f" after {n} row{'s' if n != 1 else ''}" if n else ""
        stats.skipped.append((str(path), f"unreadable{after}: {err.message.removeprefix(f'{path}: ')}"))


def _with_text_field_guess(rows: Iterator[tuple[Any, Any]], fmt: RowFormatter) -> Iterator[tuple[Any, Any]]:
    """`rows` unchanged, after letting `fmt` guess the text field from the first few of them."""
    head = list(islice(rows, SAMPLE_ROWS))
    fmt.guess_text_field([row for _, row in head])
    return chain(head, rows)


# -- opening and decoding --------------------------------------------------------------------------


def _open_binary(path: Path):
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


@contextmanager
def _open_text(path: Path, encoding: str, newline: str | None = None):
    """A text stream that turns decoding trouble into a UserError with the byte offset."""
    raw = _open_binary(path)
    try:
        name = codecs.lookup(encoding).name
        if name == "utf-8":
            # A UTF-16/32 byte order mark (Windows Notepad's "Unicode") cannot start UTF-8 text: read the file as
            # what its BOM says, as editors do, rather than call it binary.
            encoding = name = _bom_encoding(raw.peek(4)[:4]) or name
        if not name.startswith(("utf-16", "utf-32")):
            head = raw.peek(8192)[:8192]
            if b"\x00" in head:
                raise UserError(_nul_message(path, head))
        # utf-8-sig drops the BOM Windows tools write, which would otherwise glue onto the first field.
        yield io.TextIOWrapper(raw, encoding="utf-8-sig" if name == "utf-8" else encoding, newline=newline)
    except UnicodeError:  # UnicodeDecodeError, or a codec's own complaint ("UTF-16 stream does not start with BOM")
        raise _decode_error(path, encoding) from None
    except (gzip.BadGzipFile, EOFError, zlib.error) as err:
        raise UserError(f"{path}: broken gzip data ({err}); re-create the file") from None
    finally:
        raw.close()


def _bom_encoding(head: bytes) -> str | None:
    """utf-32 or utf-16 when `head` starts with that encoding's byte order mark (the codec then reads the BOM
    for the byte order and drops it), else None."""
    if head.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
        return "utf-32"
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    return None


def _nul_message(path: Path, head: bytes) -> str:
    """A file with NUL bytes: UTF-16 without a BOM (ASCII characters put a NUL in every other byte, and the
    bytes decode in that byte order into printable text) says which --encoding reads it; else it is binary."""
    head = head[:len(head) // 2 * 2]
    for zeros, order in ((head[1::2], "le"), (head[0::2], "be")):
        if zeros.count(0) < 0.2 * len(zeros):
            continue
        text = head.decode(f"utf-16-{order}", errors="replace")
        if sum(c.isprintable() or c in "\t\n\r" for c in text) >= 0.98 * len(text):
            return (f"{path}: looks like UTF-16 text without a byte order mark (NUL byte at offset {head.index(0)}); "
                    f"pass --encoding utf-16-{order}, or save it as UTF-8")
    return f"{path}: looks like a binary file (NUL byte at offset {head.index(0)}), not text; supported: {SUPPORTED}"


def _decode_error(path: Path, encoding: str) -> UserError:
    """Find the first undecodable byte by re-reading; only the error path pays for exact offsets."""
    decoder = codecs.getincrementaldecoder(encoding)(errors="strict")
    offset = 0
    with _open_binary(path) as f:
        while True:
            chunk = f.read(1 << 20)
            pending = len(decoder.getstate()[0])  # bytes of a split character from the last chunk
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as err:
                where = offset - pending + err.start
                byte = err.object[err.start]
                gz = " of the uncompressed data" if path.name.lower().endswith(".gz") else ""
                return UserError(f"{path}: cannot decode byte 0x{byte:02x} at offset {where}{gz} as {encoding}; "
                                 + _encoding_hint(path), param="data.encoding")
            except UnicodeError as err:
                return UserError(f"{path}: cannot decode as {encoding} ({err}); " + _encoding_hint(path),
                                 param="data.encoding")
            if not chunk:
                break
            offset += len(chunk)
    return UserError(f"{path}: cannot decode as {encoding}; " + _encoding_hint(path), param="data.encoding")


def _encoding_hint(path: Path) -> str:
    """--encoding with the ones the file's first megabyte decodes as plausibly (GBK files are common in Chinese)."""
    from llmkit.data.encodings import likely_encodings

    with _open_binary(path) as f:
        found = likely_encodings(f.read(1 << 20))
    if not found:
        return "pass --encoding with the one it was saved in"
    if len(found) == 1:
        return f"it reads as {found[0][1]}: pass --encoding {found[0][0]}"
    return ("it reads as " + " or ".join(f"{what} ({enc})" for enc, what in found)
            + f": pass --encoding {found[0][0]}, or the other if the text comes out wrong")


# -- readers: each yields (line, row dict or BadRecord) --------------------------------------------


def _txt_rows(path: Path, encoding: str, doc_split: str):
    with _open_text(path, encoding) as f:
        if doc_split == "file":
            text = f.read()  # one document is one file; holding it whole is the point
            yield 1, {"text": text} if text.strip() else BadRecord(f"{path}: empty file")
        elif doc_split == "line":
            for n, line in enumerate(f, 1):
                if line.strip():
                    yield n, {"text": line.rstrip("\n")}
        else:
            para: list[str] = []
            start = 0
            for n, line in enumerate(f, 1):
                if line.strip():
                    start = start if para else n
                    para.append(line.rstrip("\n"))
                elif para:
                    yield start, {"text": "\n".join(para)}
                    para = []
            if para:
                yield start, {"text": "\n".join(para)}


def _jsonl_rows(path: Path, encoding: str):
    with _open_text(path, encoding) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:  # without its line break, an error at the line's end is at its own column, not "column 1" of the next
                yield n, json.loads(line.rstrip("\r\n"))
            except json.JSONDecodeError as err:
                # A JSON array's elements pasted as lines keep their commas: `{...},` is that object.
                body = line.rstrip()
                if err.msg == "Extra data" and body.endswith(",") and err.pos == len(body) - 1:
                    yield n, json.loads(body[:-1])
                    continue
                yield n, BadRecord(f"{path}:{n}: invalid JSON ({err.msg} at column {err.colno})"
                                   + full_width_hint(line, err.pos))


def _json_rows(path: Path, encoding: str):
    with _open_text(path, encoding) as f:
        yield from JsonArray(path, f).rows()


def _csv_rows(path: Path, encoding: str, fmt: RowFormatter, delimiter: str | None):
    """Rows of a .tsv (`delimiter` tab), or of a .csv whose separator (None) is found from its first rows."""
    # TSV has no quoting by definition: SMS Spam's texts start with '"' and must stay one row per line.
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    csv.field_size_limit(max(csv.field_size_limit(), 1 << 30))  # whole documents in one cell are fine
    with _open_text(path, encoding, newline="") as f:
        lines: Iterable[str] = f
        skipped = 0
        if delimiter is None:
            sample = f.read(SNIFF_CHARS)
            sample += f.readline()  # to the end of a line
            delimiter, skipped = csv_delimiter(sample)
            lines = chain(io.StringIO(sample[line_end(sample) if skipped else 0:], newline=""), f)
        rows = _numbered(path, csv.reader(lines, delimiter=delimiter, quoting=quoting), skipped)
        first = next(rows, None)
        if first is None:
            yield 1, BadRecord(f"{path}: empty file")
            return
        wanted = {n.lower() for n in (fmt.text_field, fmt.label_field) if n and not n.isdigit()}
        if any(cell.strip().lower() in wanted | _HEADER_NAMES for cell in first[1]):
            columns = [cell.strip() or str(i) for i, cell in enumerate(first[1])]
            fmt.check_columns(columns)
            for n, row in rows:
                # A row of another width would shift or lose cells (an unquoted comma cut "hello, world" to
                # "hello" and made " world" the label; a short row was blamed on --label-field): said as such.
                extra = row[len(columns):]
                if len(row) < len(columns) or any(cell.strip() for cell in extra):
                    yield n, BadRecord(f"{path}:{n}: {len(row)} cells where the header has {len(columns)} "
                                       f"({', '.join(columns)}); {_width_hint(delimiter, len(row) > len(columns))}",
                                       reason="columns")
                    continue
                yield n, dict(zip(columns, row, strict=False))
            return
        head = [first, *islice(rows, _SNIFF_ROWS - 1)]
        usual = Counter(len(row) for _, row in head).most_common(1)[0][0]  # the width most rows have
        fmt.set_defaults(*guess_columns([row for _, row in head if len(row) == usual]))
        fmt.check_columns([str(i) for i in range(usual)], note="no header row; ")
        for n, row in chain(head, rows):
            if len(row) < usual or any(cell.strip() for cell in row[usual:]):
                yield n, BadRecord(f"{path}:{n}: {len(row)} cells where the file's rows have {usual} (no header "
                                   f"row); {_width_hint(delimiter, len(row) > usual)}", reason="columns")
                continue
            yield n, {str(i): cell for i, cell in enumerate(row)}


def _width_hint(delimiter: str, wide: bool) -> str:
    if delimiter == "\t":
        return "a tab inside a cell splits it (TSV has no quoting)" if wide else "each row needs every column"
    name = DELIMITER_NAMES.get(delimiter, f"'{delimiter}'")
    return (f'put a cell holding {name} in double quotes ("hello{delimiter} world")' if wide
            else f"each row needs every column (an empty one as nothing between two {name})")


def _numbered(path: Path, reader, skipped: int = 0) -> Iterator[tuple[int, list[str]]]:
    """CSV rows with the line each starts on (a quoted cell may span lines); blank rows dropped.

    `skipped`: lines read before the reader's first one (Excel's `sep=;`)."""
    prev = 0
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            raise UserError(f"{path}:{reader.line_num + skipped}: invalid CSV ({err})") from None
        start, prev = prev + 1, reader.line_num
        if any(cell.strip() for cell in row):
            yield start + skipped, row


def _parquet_rows(path: Path, fmt: RowFormatter):
    import pyarrow as pa  # heavy; only Parquet inputs pay for the import
    import pyarrow.parquet as pq

    source = _open_binary(path)
    try:
        try:
            pf = pq.ParquetFile(source)
        except (pa.ArrowException, OSError, EOFError, zlib.error) as err:
            raise UserError(f"{path}: not a readable Parquet file ({err})") from None
        schema = pf.schema_arrow
        columns = None
        if fmt.task not in ("chat", "preference"):  # those read whole rows, not a text column
            fmt.choose_label(schema.names)
            if fmt.text_field is None:
                strings = [f.name for f in schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)]
                fmt.set_defaults(default_text_column(schema.names, strings, fmt.label_field), None)
                if fmt.text_field is None:
                    raise UserError(f"{path}: no text column (columns: {', '.join(schema.names)}); pass --text-field")
            fmt.check_columns(schema.names)
            # Reading only the needed columns keeps wide tables (embeddings, metadata) out of memory.
            columns = [c for c in (fmt.text_field, fmt.label_field) if c is not None and c in schema.names]
        n = 0
        try:
            for batch in pf.iter_batches(batch_size=1024, columns=columns):
                for row in batch.to_pylist():
                    n += 1
                    yield n, row
        except (pa.ArrowException, OSError) as err:
            raise UserError(f"{path}: cannot read row {n + 1} ({err})") from None
    finally:
        source.close()

