"""Parsing of raw cell strings: null tokens, numbers, booleans, datetimes."""

from __future__ import annotations

import math
import re
import unicodedata
import pandas as pd

NULL_TOKENS = frozenset({
    "null", "none", "nil", "nan", "na", "n/a", "n.a.", "n.a", "#n/a", "#na", "#null!", "#value!",
    "?", "??", "???", "-", "--", "---", ".", "..", "...", "missing", "unknown", "undefined",
    "not available", "not applicable", "no data", "(null)", "(blank)", "<null>", "<na>", "*",
})
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
_THOUSANDS = re.compile(r"^[+-]?\d{1,3}(,\d{3})+(\.\d*)?$")
_TRUE = frozenset({"true", "t", "yes", "y"})
_FALSE = frozenset({"false", "f", "no", "n"})


def normalize_text(value: str) -> str:
    """The one normalisation of a cell's text that detection, schema inference, validation and
    the model compare with: surrounding white space trimmed, Unicode in NFC; case kept. The
    output keeps a cell as the file had it unless the column's schema says ``normalize: true``.
    (``lakefill._arrow.normalize_array`` is the same on Arrow arrays.)"""
    return unicodedata.normalize("NFC", value.strip())


def is_blank(value: str) -> bool:
    return value.strip() == ""


def is_null_token(value: str) -> bool:
    return value.strip().lower() in NULL_TOKENS


def parse_number(value: str) -> float | None:
    """A number as people write it in tables: ``12``, ``-3.5e2``, ``1,234``, ``45%``, ``$12``."""
    s = value.strip()
    if not s:
        return None
    if s.endswith("%"):
        s = s[:-1].rstrip()
    if s.startswith("$"):
        s = s[1:]
    if _NUMBER.match(s):
        return float(s)
    if _THOUSANDS.match(s):
        return float(s.replace(",", ""))
    return None


def parse_number_array(strings: list[str]) -> tuple[list[float], int]:
    """Parse every string; returns the numbers (NaN where unparseable) and the count of failures."""
    out, bad = [], 0
    for s in strings:
        x = parse_number(s)
        if x is None:
            bad += 1
            out.append(math.nan)
        else:
            out.append(x)
    return out, bad


def parse_bool(value: str) -> bool | None:
    s = value.strip().lower()
    if s in _TRUE:
        return True
    if s in _FALSE:
        return False
    return None


_DATE_HINT = re.compile(r"^\d{4}-\d{1,2}-\d{1,2}([ T]\d{1,2}:\d{2}(:\d{2}(\.\d+)?)?)?(Z|[+-]\d{2}:?\d{2})?$|^\d{1,2}/\d{1,2}/\d{4}$")


def parse_datetime_array(strings: list[str]) -> tuple[list[float], int]:
    """Parse ISO-like dates; returns epoch seconds (NaN where unparseable) and the failure count."""
    if not strings or not all(_DATE_HINT.match(s) for s in strings[:1000]):
        return [], len(strings) or 1
    parsed = pd.to_datetime(pd.Series(strings), errors="coerce", utc=True, format="mixed")
    bad = int(parsed.isna().sum())
    secs = [math.nan if pd.isna(t) else t.timestamp() for t in parsed]
    return secs, bad
