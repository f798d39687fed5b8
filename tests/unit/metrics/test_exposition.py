"""metrics/exposition.py against prometheus_client's own writer and parser: the same samples
from any exposition the client library writes; a bad line is an error, never skipped."""

from __future__ import annotations

import math
from decimal import Decimal

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from phasegate.metrics.exposition import ExpositionError, read_line, samples, series

label_values = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)
numbers = st.floats(allow_nan=True, allow_infinity=True, width=64)


def theirs(text: str) -> list[tuple[str, dict[str, str], float]]:
    return [(s.name, dict(s.labels), s.value) for f in text_string_to_metric_families(text) for s in f.samples]


def same_value(ours: Decimal, their: float) -> bool:
    if math.isnan(their):
        return ours.is_nan()
    return ours == Decimal(repr(their))


@settings(max_examples=150, deadline=None)
@given(
    gauges=st.lists(st.tuples(label_values, numbers), max_size=4),
    counter=st.floats(min_value=0, max_value=1e18),
    observations=st.lists(st.floats(min_value=0, max_value=1e6), max_size=6),
)
def test_the_same_samples_as_prometheus_client(gauges: list[tuple[str, float]], counter: float,
                                               observations: list[float]) -> None:
    reg = CollectorRegistry()
    g = Gauge("strategy_cash", "cash", ["account"], registry=reg)
    for account, value in gauges:
        g.labels(account).set(value)
    Counter("strategy_orders_submitted", "orders", registry=reg).inc(counter)
    h = Histogram("strategy_order_latency_seconds", "latency", registry=reg)
    for o in observations:
        h.observe(o)
    text = generate_latest(reg).decode()
    ours, their = list(samples(text)), theirs(text)
    assert [(n, labels) for n, labels, _ in ours] == [(n, labels) for n, labels, _ in their]
    for (_, _, mine), (_, _, other) in zip(ours, their, strict=True):
        assert same_value(mine, other), (mine, other)


def test_the_syntax_the_format_allows() -> None:
    text = (
        "# HELP a_total help text\n# TYPE a_total counter\n"
        "a_total 3 1700000000000\n"
        'b{x="1",y="two",} 4.5\n'
        '\tc { x = "a\\"b\\\\c\\nd" }  -Inf  \r\n'
        "d{} +Inf\n"
        "e NaN\n"
        "f 1e+06\n"
        "\n"
    )
    got = list(samples(text))
    assert [(n, labels) for n, labels, _ in got] == [
        ("a_total", {}), ("b", {"x": "1", "y": "two"}), ("c", {"x": 'a"b\\c\nd'}), ("d", {}), ("e", {}), ("f", {}),
    ]
    values = [v for _, _, v in got]
    assert values[:2] == [Decimal(3), Decimal("4.5")]
    assert values[2] == Decimal("-Infinity") and values[3] == Decimal("Infinity") and values[4].is_nan()
    assert values[5] == Decimal(1_000_000)
    assert [(n, labels) for n, labels, _ in got] == [(n, labels) for n, labels, _ in theirs(text)]


@pytest.mark.parametrize("line", [
    "portfolio_value",                       # no value
    "portfolio_value abc",                   # not a number
    "portfolio_value sNaN",                  # a signalling NaN
    "portfolio_value 1 2 3",                 # more than a timestamp
    "portfolio_value 1 soon",                # a timestamp that is not milliseconds
    'portfolio_value{a="1" 5',               # unclosed labels
    'portfolio_value{a="1} 5',               # unterminated label value
    "portfolio_value{a=1} 5",                # unquoted label value
    'portfolio_value{a="1",a="2"} 5',        # a label twice
    'portfolio_value{a="1"}5',               # no space before the value
    "1portfolio 5",                          # not a metric name
])
def test_a_bad_line_is_an_error_naming_it(line: str) -> None:
    with pytest.raises(ExpositionError, match="line 2"):
        list(samples("ok 1\n" + line + "\n"))


# Lines made of the pieces a sample line has, near misses included: the one-match reading of
# the common shape must agree with the full reading on every one (same sample, or an error).
_PIECES = st.sampled_from(['a', 'b_c', ':x', '9', '{', '}', '="1"', '="\\\\n"', '="}"', 'le', ',', ' ', '  ', '\t',
                           '1', '-1', '+Inf', 'NaN', '1e3', '12345', 'x="2"', 'x="3"', '"', '\\'])


def _full(line: str) -> object:
    try:
        return read_line(line, 1)
    except ExpositionError as exc:
        return ("error", str(exc))


def _fast(line: str) -> object:
    try:
        return list(samples(line))[0]
    except ExpositionError as exc:
        return ("error", str(exc))


@settings(max_examples=3000, deadline=None)
@given(st.lists(_PIECES, min_size=1, max_size=9).map("".join))
@example('a{x="2"le="3"} 1')  # no comma between labels
@example('a{x="2",,x="3"} 1')
@example('a{,} 1')
@example('a{x="2",x="3"} 1')  # a label twice
@example('a{x="1"}1')  # no space before the value
@example('a{x="1"} 1 2 3')
def test_the_fast_reading_agrees_with_the_full_one(raw: str) -> None:
    line = raw.strip(" \t\r")
    if not line or line[0] == "#" or "\n" in line:
        return
    fast, full = _fast(line), _full(line)
    if isinstance(full, tuple) and full and full[0] == "error":
        assert isinstance(fast, tuple) and fast[0] == "error", (line, fast, full)
    else:
        assert repr(fast) == repr(full), line  # as text: a NaN (NaN1 too) is not equal to itself


def _grouped(text: str) -> object:
    try:
        out: dict[str, list[object]] = {}
        for name, labels, value in samples(text):
            out.setdefault(name, []).append((labels, value))
        return out
    except ExpositionError as exc:
        return ("error", str(exc))


def _one_pass(text: str) -> object:
    try:
        return series(text)
    except ExpositionError as exc:
        return ("error", str(exc))


def _same(a: object, b: object) -> bool:
    # NaN is not equal to itself: compare the values as text.
    return repr(a) == repr(b)


# Whole texts of such lines, comments, blank lines and line ends of every kind: the one-pass
# reading of a text must give what the line-by-line one gives (or the same error).
_LINES = st.one_of(st.lists(_PIECES, min_size=1, max_size=7).map("".join),
                   st.sampled_from(["", "#", "# TYPE a gauge", " # x", "\r", "a 1", 'a{le="1"} 2', "b_total 3"]))


@settings(max_examples=2000, deadline=None)
@given(st.lists(_LINES, max_size=8), st.sampled_from(["\n", "\r\n", "\n\n"]), st.booleans(), st.booleans())
@example(["", "", "", "a 1"], "\n", False, False)  # a run of blank lines: counted short, read in full
@example(["#", "a 1 2"], "\n", True, False)  # a timestamp: not the one-pass shape
@example(['a{x="1",x="2"} 1'], "\n", False, False)  # a label twice
@example(["a sNaN"], "\n", False, False)
@example(["a 1", "a oops"], "\n", True, False)
def test_the_one_pass_reading_agrees_with_the_line_by_line_one(lines: list[str], end: str, trailing: bool,
                                                              leading: bool) -> None:
    text = ("\n" if leading else "") + end.join(lines) + (end if trailing else "")
    one, full = _one_pass(text), _grouped(text)
    assert _same(one, full), (text, one, full)


def test_a_bad_line_after_good_ones_is_named_by_the_one_pass_reading_too() -> None:
    with pytest.raises(ExpositionError, match="line 3"):
        series("# TYPE a gauge\na 1\na{x=1} 2\n")
