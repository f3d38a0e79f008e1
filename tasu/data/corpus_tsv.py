"""The tab-separated tables corpora ship (Common Voice, CoVoST 2), read with errors that say where.

    for line, row in read_tsv("cv/en/train.tsv", {"path", "sentence", "client_id"}):
        ...

A recipe's ``local/data.sh`` reads a release's tables once; what it must not do is stop on a bad
byte or a truncated row with a Python traceback, or skip such a row without a word. Every problem
is a ``DataError`` naming the file and line: the file missing, a header without a column the
recipe needs or naming a column twice, a line with fewer fields than the header (a row cut short,
often a tab lost in an edit) or more (a tab inside a field: the fields after it would shift into the
next columns, even where the extra field is empty, since releases end rows with empty columns),
bytes that are not UTF-8. A UTF-8 byte-order mark is accepted, empty lines are skipped.

Quoting: these tables are written without quoting (a sentence may hold a bare ``"``), so fields
are split on tabs only. CoVoST's own tools write them with ``\\`` escaping a tab, a newline or a
quote; ``escapechar="\\\\"`` reads that back (Common Voice's tables use no escape character).
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Iterable, Iterator

from tasu.data.records import DataError


def read_tsv(path: str | Path, columns: Iterable[str], escapechar: str | None = None
             ) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield ``(line number, row)`` for each row of ``path`` below its header; ``columns`` are
    those the caller needs (the header may have more, in any order). Raises ``DataError``."""
    path = Path(path)
    try:
        f = open(path, "rb")
    except OSError as e:
        raise DataError(str(path), None, None, f"cannot read it ({e.strerror})") from None
    with f:
        reader = csv.reader(_decoded(f, path), delimiter="\t", quoting=csv.QUOTE_NONE,
                            escapechar=escapechar, strict=True)
        try:
            header = next(reader, None)
            if header is None:
                raise DataError(str(path), None, None, "empty file: expected a header line")
            twice = sorted({name for name in header if header.count(name) > 1})
            if twice:
                raise DataError(str(path), 1, None, f"the header names {', '.join(twice)} twice: which column "
                                                    "is it?")
            lacking = sorted(set(columns) - set(header))
            if lacking:
                raise DataError(str(path), 1, None, f"no column {', '.join(lacking)} in the header "
                                                    f"({' '.join(header)})")
            for fields in reader:
                if not fields:
                    continue
                line = reader.line_num
                if len(fields) != len(header):
                    raise DataError(str(path), line, None, f"{len(fields)} tab-separated fields where the "
                                                           f"header has {len(header)}")
                yield line, dict(zip(header, fields))
        except csv.Error as e:
            why = str(e)
            if "new-line character seen" in why:   # csv's own words ask for "universal-newline mode"
                why = "a carriage return inside a field (lines end in \\n or \\r\\n)"
            raise DataError(str(path), reader.line_num, None, why) from None


def _decoded(lines: Iterable[bytes], path: Path) -> Iterator[str]:
    """The lines of a binary file as text, a line that is not UTF-8 a ``DataError`` at its number."""
    for n, raw in enumerate(lines, 1):
        try:
            yield raw.decode("utf-8-sig" if n == 1 else "utf-8")
        except UnicodeDecodeError as e:
            raise DataError(str(path), n, "encoding", f"not UTF-8 (byte {e.start + 1} of the line)") from None
