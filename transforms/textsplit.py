"""Splitting a text file (CSV, JSON Lines) into byte ranges that start and end on record
boundaries, so that several tasks read one large file, with every record's number the one a
single reader of the whole file gives it.

One sequential pass over the bytes (numpy, in 16 MiB blocks; no parsing) finds the record
boundaries: a newline outside quotes ends a record. A quote opens a quoted field only at a
field's start and closes it before a delimiter, a line end, another quote (a doubled quote) or
the end of the file; a file whose quotes break that rule (a quote inside an unquoted field,
which Python's reader takes literally) cannot be split by counting quotes and is read whole, as
is a file with a carriage return that does not end a line (Python's reader counts it as a line
break) and a file in an encoding where the quote and newline bytes can occur inside a character
(UTF-16). For each split the pass keeps its first byte, its record number (blank lines are not
records, as for the reader) and its line number, so quarantine reasons name the same record and
line whatever the split.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass

import numpy as np

__all__ = ["TextSplit", "text_splits", "BLOCK"]

BLOCK = 16 << 20
# encodings where every byte under 0x80 is that ASCII character (never part of a longer one)
_ASCII_SAFE = {"utf-8", "utf-8-sig", "ascii", "latin-1", "iso8859-1", "iso8859-15", "cp1252", "cp1250", "cp1251"}
_NL, _CR = 0x0A, 0x0D


@dataclass(frozen=True)
class TextSplit:
    start: int  # byte offset of the split's first record
    end: int  # byte offset just past its last record (the next split's start, or the file's size)
    first_record: int  # the record number of its first record (0 = the first data record)
    first_line: int  # newlines before ``start`` (the reader's line numbers are offset by it)


def text_splits(fh, size: int, *, n: int, quotechar: str | None, delimiter: str | None, encoding: str,
                header: bool = True) -> list[TextSplit] | None:
    """Up to ``n`` splits of the binary stream ``fh`` (``size`` bytes) of roughly equal bytes, the
    first starting after the header line (``header``); None when the file cannot be split safely
    (see the module's docstring) or holds fewer than 2 records per split. ``quotechar`` None: no
    quoting (JSON Lines: every line is a record, blank ones included)."""
    if n < 2 or codecs.lookup(encoding).name not in _ASCII_SAFE:
        return None
    quote = ord(quotechar) if quotechar else None
    delim = ord(delimiter) if delimiter else None
    targets = [size * k // n for k in range(1, n)]
    starts: list[tuple[int, int, int]] = []  # (byte, record number, line number) of each split's start
    header_end, header_lines = None, 0
    quotes = 0  # quotes seen so far (parity: inside a quoted field when odd)
    records = 0  # records ended so far (the header included when there is one)
    lines = 0
    prev_end = -1  # offset of the last record-ending newline
    prev_byte = -1  # the byte before this block
    pending_close = False  # the previous block ended on a closing quote: the next byte must allow it
    offset = 0
    t = 0
    while offset < size:
        block = fh.read(min(BLOCK, size - offset))
        if not block:
            break
        a = np.frombuffer(block, dtype=np.uint8)
        if pending_close and not _closes(a[0], delim, quote):
            return None
        pending_close = False
        cr = np.flatnonzero(a == _CR)
        if len(cr):  # a carriage return must be followed by a newline
            inner = cr[cr < len(a) - 1]
            if np.any(a[inner + 1] != _NL):
                return None
            if cr[-1] == len(a) - 1 and offset + len(a) < size and _peek(fh) != _NL:
                return None
        bom = 3 if offset == 0 and block[:3] == codecs.BOM_UTF8 else 0
        nl = np.flatnonzero(a == _NL)
        if quote is not None:
            q = np.flatnonzero(a == quote)
            if len(q):
                ordinal = quotes + np.arange(len(q))
                before = np.where(q > 0, a[np.maximum(q - 1, 0)], prev_byte)
                opening = ordinal % 2 == 0
                ok_open = (before == _NL) | (before == _CR) | (before == quote) | (before == -1)
                if delim is not None:
                    ok_open |= before == delim
                if np.any(opening & ~ok_open & (q + offset > bom)):
                    return None
                closing = ~opening
                inside = q < len(a) - 1
                after = a[np.minimum(q + 1, len(a) - 1)]
                ok_close = (after == _NL) | (after == _CR) | (after == quote)
                if delim is not None:
                    ok_close |= after == delim
                if np.any(closing & inside & ~ok_close):
                    return None
                if closing[-1] and not inside[-1] and offset + len(a) < size:
                    pending_close = True
                parity = (quotes + np.searchsorted(q, nl)) % 2
            else:
                parity = np.full(len(nl), quotes % 2)
            quotes += len(q)
            ends = nl[parity == 0]
        else:
            ends = nl
        ends_abs = ends.astype(np.int64) + offset
        # a blank line (nothing, or a lone carriage return, since the last record's end) is no record
        prev = np.concatenate([[prev_end], ends_abs[:-1]]) if len(ends_abs) else ends_abs
        width = ends_abs - prev
        blank = np.zeros(len(ends_abs), dtype=bool)
        if quote is not None:
            blank = width == 1
            two = width == 2
            if two.any():  # the byte before the newline may sit in the previous block
                before_nl = np.where(ends > 0, a[np.maximum(ends - 1, 0)], prev_byte)
                blank[two] = before_nl[two] == _CR
        counted = np.cumsum(~blank)  # records ended up to and including each boundary in this block
        nl_before = np.searchsorted(nl, ends, side="right")  # newlines up to and including each boundary
        if header and header_end is None and len(ends_abs):
            first = int(np.argmax(~blank)) if (~blank).any() else None
            if first is not None:
                header_end = int(ends_abs[first]) + 1
                header_lines = lines + int(nl_before[first])
        while t < len(targets) and len(ends_abs):
            target = max(targets[t], header_end or 0)
            i = int(np.searchsorted(ends_abs + 1, target))  # the first record start at or after the target
            if i >= len(ends_abs):
                break
            starts.append((int(ends_abs[i]) + 1, records + int(counted[i]), lines + int(nl_before[i])))
            t += 1
        records += int(counted[-1]) if len(counted) else 0
        lines += len(nl)
        if len(ends_abs):
            prev_end = int(ends_abs[-1])
        prev_byte = int(a[-1])
        offset += len(a)
    if quote is not None and quotes % 2:
        return None  # an unclosed quote: let the reader say where
    if header and header_end is None:
        return None
    last_is_record = prev_end < size - 1 and not (size - prev_end == 2 and prev_byte == _CR)
    total = records + int(last_is_record)
    skip = 1 if header else 0
    first_start = (header_end, 0, header_lines) if header else (0, 0, 0)
    points = [first_start] + [(b, r - skip, ln) for b, r, ln in starts if b > first_start[0] and b < size]
    points = sorted(set(points))
    if len(points) < 2 or total - skip < 2 * len(points):
        return None
    out = []
    for k, (b, r, ln) in enumerate(points):
        end = points[k + 1][0] if k + 1 < len(points) else size
        out.append(TextSplit(b, end, r, ln))
    return out


def _closes(byte, delim, quote) -> bool:
    return byte in (_NL, _CR, quote) or (delim is not None and byte == delim)


def _peek(fh) -> int:
    """The next byte of ``fh`` without consuming it (-1 at the end)."""
    pos = fh.tell()
    b = fh.read(1)
    fh.seek(pos)
    return b[0] if b else -1
