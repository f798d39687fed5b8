"""Prometheus text exposition (format 0.0.4) read into samples, strictly and quickly.

Why not prometheus_client's parser: it builds a family object and a float per sample and
was a tenth of the operator's CPU at a thousand strategies, each scraped every few seconds.
This reads only what the snapshot needs (sample name, labels, value) and reads the value
straight into a Decimal (no float in between). It is as strict as that parser where it
matters: a line it cannot read is an error (the read fails, counting towards
`metricsFailure`), never skipped.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from decimal import Decimal, InvalidOperation
from typing import Optional

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL = re.compile(r'[ \t]*([a-zA-Z_][a-zA-Z0-9_]*)[ \t]*=[ \t]*"((?:[^"\\\n]|\\.)*)"[ \t]*(,|\})')
_CLOSE = re.compile(r"[ \t]*\}")
_ESCAPES = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}
_ESCAPE = re.compile(r"\\.")
# The shape nearly every line has (one space before the value, no timestamp, no escapes in
# label values): read with one match. Anything else goes through the full reading below,
# which also names the error of a bad line.
_PAIR_TEXT = r'[a-zA-Z_][a-zA-Z0-9_]*="[^"\\\n]*"'
_FAST = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{((?:%s(?:,%s)*,?)?)\})? ([^ \t]+)" % (_PAIR_TEXT, _PAIR_TEXT))
_PAIR = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="([^"\\\n]*)"')
# The same shape over a whole text at once, at most one match per line: Python's loop over
# lines was most of a read's cost; this leaves it to the regex engine.
_FAST_LINES = re.compile(
    r"^[ \t\r]*([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{((?:%s(?:,%s)*,?)?)\})? ([^ \t\r\n]+)[ \t\r]*$" % (_PAIR_TEXT, _PAIR_TEXT),
    re.M)
_SPECIAL = {"+Inf": Decimal("Infinity"), "Inf": Decimal("Infinity"), "-Inf": Decimal("-Infinity"), "NaN": Decimal("NaN")}


class ExpositionError(ValueError):
    """The text is not Prometheus text exposition; the message names the line."""


Sample = tuple[str, dict[str, str], Decimal]


def _unescape(raw: str) -> str:
    if "\\" not in raw:
        return raw
    return _ESCAPE.sub(lambda m: _ESCAPES.get(m.group(0), m.group(0)), raw)


def _labels(line: str, start: int, lineno: int) -> tuple[dict[str, str], int]:
    """The labels from `line[start]` == "{", and the position after the closing brace."""
    out: dict[str, str] = {}
    pos = start + 1
    close = _CLOSE.match(line, pos)
    if close is not None:
        return out, close.end()
    while True:
        m = _LABEL.match(line, pos)
        if m is None:
            raise ExpositionError(f"line {lineno}: cannot read the labels at column {pos + 1}: {line!r}")
        name = m.group(1)
        if name in out:
            raise ExpositionError(f"line {lineno}: label {name!r} given twice: {line!r}")
        out[name] = _unescape(m.group(2))
        pos = m.end()
        if m.group(3) == "}":
            return out, pos
        close = _CLOSE.match(line, pos)  # a trailing comma before the brace is allowed
        if close is not None:
            return out, close.end()


def _value(token: str, line: str, lineno: int) -> Decimal:
    special = _SPECIAL.get(token)
    if special is not None:
        return special
    try:
        value = Decimal(token)
    except InvalidOperation:
        raise ExpositionError(f"line {lineno}: {token!r} is not a number: {line!r}") from None
    if value.is_snan():  # a signalling NaN raises on every comparison: no exporter means it
        raise ExpositionError(f"line {lineno}: {token!r} is not a number: {line!r}")
    return value


def samples(text: str) -> Iterator[Sample]:
    """Every sample of `text` as (sample name, labels, value); ExpositionError on a bad line."""
    for lineno, raw in enumerate(text.split("\n"), 1):
        line = raw.strip(" \t\r")
        if not line or line[0] == "#":
            continue
        fast = _FAST.fullmatch(line)
        if fast is not None:
            name, inner, token = fast.groups()
            labels = _fast_labels(inner)
            if labels is not None:  # a label given twice: the full reading says so
                yield name, labels, _value(token, line, lineno)
                continue
        yield read_line(line, lineno)


def _fast_labels(inner: str) -> Optional[dict[str, str]]:
    """The labels inside the braces of a line `_FAST` matched; None when one is given twice."""
    if not inner:
        return {}
    pairs = _PAIR.findall(inner)
    labels = dict(pairs)
    return labels if len(labels) == len(pairs) else None


Series = dict[str, list[tuple[dict[str, str], Decimal]]]


def _plain_lines(text: str) -> int:
    """How many lines of `text` are certainly no sample: those that begin with "#" and the
    empty ones, counted by str.count (in C). It may count fewer (a comment after blanks, a run of
    three empty lines): the one-pass reading then gives way to the full one, never the reverse.
    Every other line must then be one of the one-pass matches, each of which is on a line of its
    own and is no comment or empty line: all of them were read."""
    if not text:
        return 1
    return text.count("\n#") + text.count("\n\n") + (text[0] in "#\n") + (text[-1] == "\n")


def series(text: str) -> Series:
    """The samples of `text` by sample name, in order: what `samples` reads, grouped.

    Text of the common shape only (every sample line as `_FAST` reads it, no label twice, no
    value that is not a number) is read in one pass; any other text is read line by line,
    which says what is wrong with a bad line.
    """
    out: Series = {}
    found = _FAST_LINES.findall(text)
    if len(found) + _plain_lines(text) == text.count("\n") + 1:
        for name, inner, token in found:
            labels = _fast_labels(inner)
            if labels is None:
                break
            try:
                value = _value(token, "", 0)
            except ExpositionError:  # the line-by-line reading names the line
                break
            entry = out.get(name)
            if entry is None:
                out[name] = [(labels, value)]
            else:
                entry.append((labels, value))
        else:
            return out
        out = {}
    for name, labels, value in samples(text):
        out.setdefault(name, []).append((labels, value))
    return out


def read_line(line: str, lineno: int) -> Sample:
    """One sample line (stripped, not a comment), read in full."""
    m = _NAME.match(line)
    if m is None:
        raise ExpositionError(f"line {lineno}: no metric name: {line!r}")
    name, pos = m.group(0), m.end()
    labels: dict[str, str] = {}
    brace = pos
    while brace < len(line) and line[brace] in " \t":
        brace += 1
    if brace < len(line) and line[brace] == "{":
        labels, pos = _labels(line, brace, lineno)
    rest = line[pos:]
    if rest and rest[0] not in " \t":
        raise ExpositionError(f"line {lineno}: expected a space before the value: {line!r}")
    parts = rest.split()
    if not parts or len(parts) > 2:
        raise ExpositionError(f"line {lineno}: expected a value and at most a timestamp: {line!r}")
    if len(parts) == 2 and not parts[1].lstrip("-").isdigit():
        raise ExpositionError(f"line {lineno}: timestamp {parts[1]!r} is not in milliseconds: {line!r}")
    return name, labels, _value(parts[0], line, lineno)


__all__ = ["ExpositionError", "Sample", "Series", "read_line", "samples", "series"]
