"""The operator's own risk arithmetic: limits checked from the strategy's raw numbers.

Independent of what the strategy says about its own risk: drawdown and daily loss are
computed here from portfolio value, against a high-water mark and a day-open value kept
in RiskState (status), so an operator restart loses neither. Pure: no I/O, no clock;
Decimal throughout.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Optional
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from phasegate.api.durations import parse_duration
from phasegate.api.observations import (
    C_BREAKER_PREFIX,
    C_ERRORS,
    C_ORDERS_SUBMITTED,
    MetricsSnapshot,
    counter_increases,
)
from phasegate.api.spec import ACTION_SEVERITY, Action, Limit, RiskLimits, StrategySpec, TradingDay
from phasegate.api.status import Book, RiskState, Severity

from . import accounting

ZERO = Decimal(0)
KIND_RISK = "risk"
KIND_CIRCUIT = "circuit"
STRATEGY_BREAKER_PREFIX = "strategyBreaker:"

_RATE_LIMITS = frozenset({"maxOrderRate", "maxErrorRate"})

_CRITICAL = Decimal(2)
_HIGH = Decimal("1.5")
_MEDIUM = Decimal("1.2")


@dataclass(frozen=True)
class Breach:
    name: str  # the RiskLimits field in camelCase, or "strategyBreaker:<type>"
    kind: str  # "risk" | "circuit"
    value: Decimal
    limit: Decimal
    severity: Severity
    action: Action
    reason: str


@dataclass(frozen=True)
class RiskEvaluation:
    state: RiskState
    breaches: tuple[Breach, ...]
    readings: dict[str, Decimal]
    # Configured limits this read could not check, with why ("strategy_cash not
    # exported"). Each counts as a failed read for that limit (fail closed).
    unchecked: dict[str, str] = field(default_factory=dict)
    new_book: bool = False  # this read began a new series (first read, or a new book)

    @property
    def worst_action(self) -> Optional[Action]:
        if not self.breaches:
            return None
        return max((b.action for b in self.breaches), key=lambda a: ACTION_SEVERITY[a])


def severity(value: Decimal, limit: Decimal, *, lower_is_worse: bool = False) -> Severity:
    """Severity by the ratio of value to limit: > 2 critical, > 1.5 high, > 1.2 medium, else low.

    For a minimum (lower_is_worse, e.g. cash) the ratio is limit / value. A zero limit
    that is exceeded at all, or a minimum against a value of zero or less, is critical.
    """
    if lower_is_worse:
        if value <= 0:
            return Severity.CRITICAL if limit > 0 else Severity.LOW
        ratio = limit / value
    else:
        if limit <= 0:
            return Severity.CRITICAL if value > limit else Severity.LOW
        ratio = value / limit
    if ratio > _CRITICAL:
        return Severity.CRITICAL
    if ratio > _HIGH:
        return Severity.HIGH
    if ratio > _MEDIUM:
        return Severity.MEDIUM
    return Severity.LOW


# --- trading day -----------------------------------------------------------------------


def _zone(td: TradingDay) -> ZoneInfo:
    try:
        return ZoneInfo(td.time_zone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(
            f"spec.tradingDay.timeZone: {td.time_zone!r} is not an IANA time zone (e.g. America/New_York)"
        ) from exc


def _start(td: TradingDay) -> time:
    hh, mm = td.start_time.split(":")
    return time(int(hh), int(mm))


def day_boundary(day: date, td: TradingDay) -> datetime:
    """The UTC instant trading day `day` begins: the first instant its wall clock reads >= start.

    On a DST fall-back the start time may occur twice: the first occurrence counts. On a
    spring-forward the start time may not exist: the day begins when the clock jumps
    past it.
    """
    tz = _zone(td)
    wall = datetime.combine(day, _start(td))
    t0 = wall.replace(tzinfo=tz, fold=0).astimezone(UTC)
    if t0.astimezone(tz).replace(tzinfo=None) == wall:
        return t0
    # In a gap: fold=1 maps the wall time with the offset after the jump, which is an
    # instant before the jump; the jump lies between. Offsets and transitions are whole
    # seconds, so bisecting on whole epoch seconds finds the jump exactly.
    lo = int(wall.replace(tzinfo=tz, fold=1).timestamp())
    hi = int(t0.timestamp())
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if datetime.fromtimestamp(mid, tz).replace(tzinfo=None) >= wall:
            hi = mid
        else:
            lo = mid
    return datetime.fromtimestamp(hi, UTC)


def trading_day_of(at: datetime, td: TradingDay) -> date:
    """The trading day an instant belongs to, in the spec's time zone and start time.

    Monotone in `at` (it never goes back a day across a DST change), which a plain
    "local time >= start" comparison would not be on a fall-back night.
    """
    local = at.astimezone(_zone(td)).date()
    return local if at >= day_boundary(local, td) else local - timedelta(days=1)


# --- helpers ---------------------------------------------------------------------------


def seconds(delta: timedelta) -> Decimal:
    """A timedelta in seconds, exactly, as a Decimal (no float on the way)."""
    return Decimal(delta.days * 86400 + delta.seconds) + Decimal(delta.microseconds) / Decimal(1_000_000)


def fmt(d: Decimal, places: int = 2) -> str:
    """A number for a human: rounded to `places`, no exponent, no trailing zeros."""
    q = d.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP) if d.is_finite() else d
    s = format(q, "f")
    if "." in s:
        s = s.rstrip("0").rstrip(".")
    return "0" if s in ("-0", "") else s


def pct(d: Decimal, other: Optional[Decimal] = None) -> str:
    """A fraction as a percentage with one decimal; more decimals when one is needed to
    tell it apart from `other` (10.04% must not read "10.0% exceeds limit 10.0%")."""
    for places in (1, 2, 3, 4):
        a = (d * 100).quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)
        if other is None or d == other:
            break
        b = (other * 100).quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)
        if a != b:
            break
    return f"{format(a, 'f')}%"


def _dec(v: object) -> Decimal:
    return v if isinstance(v, Decimal) else Decimal(str(v))


def _counters(raw: Mapping[str, object]) -> dict[str, Decimal]:
    return {k: _dec(v) for k, v in raw.items()}


def advance_counters(
    before: Mapping[str, Decimal], snapshot_counters: Mapping[str, Decimal]
) -> tuple[dict[str, Decimal], bool, dict[str, Decimal]]:
    """(increases, restarted, counters to remember) for one step from `before`.

    A counter missing from this snapshot keeps its old value in memory, so that a
    metric briefly absent does not look like a jump from zero when it returns. After a
    restart only the new process's counters are remembered.
    """
    inc, restarted = counter_increases(before, snapshot_counters)
    remembered = dict(snapshot_counters) if restarted else {**before, **snapshot_counters}
    return inc, restarted, remembered


# --- evaluation ------------------------------------------------------------------------


def _limit_breach(
    name: str, limit: Limit, value: Decimal, reason: str, *, lower_is_worse: bool = False
) -> Breach:
    return Breach(
        name=name,
        kind=KIND_RISK,
        value=value,
        limit=limit.threshold,
        severity=severity(value, limit.threshold, lower_is_worse=lower_is_worse),
        action=limit.action,
        reason=reason,
    )


def _loss_breaches(limits: RiskLimits, drawdown: Decimal, daily_loss: Decimal, book: str, series: Book) -> list[Breach]:
    out = []
    if limits.max_drawdown is not None and drawdown > limits.max_drawdown.threshold:
        lim = limits.max_drawdown
        out.append(_limit_breach(
            "maxDrawdown", lim, drawdown,
            f"drawdown {pct(drawdown, lim.threshold)} from the {book} book's high-water mark "
            f"(flow-adjusted) exceeds limit {pct(lim.threshold, drawdown)}",
        ))
    if limits.max_daily_loss is not None and daily_loss > limits.max_daily_loss.threshold:
        lim = limits.max_daily_loss
        day = series.trading_day.isoformat() if series.trading_day else "?"
        out.append(_limit_breach(
            "maxDailyLoss", lim, daily_loss,
            f"daily loss {pct(daily_loss, lim.threshold)} (flow-adjusted, trading day {day}) "
            f"exceeds limit {pct(lim.threshold, daily_loss)}",
        ))
    return out


def configured_limits(spec: StrategySpec) -> dict[str, Limit]:
    """The limits the spec sets, by their camelCase name."""
    out: dict[str, Limit] = {}
    for field_name, info in type(spec.risk_limits).model_fields.items():
        lim = getattr(spec.risk_limits, field_name)
        if lim is not None:
            out[info.alias or field_name] = lim
    return out


def evaluate_risk(
    spec: StrategySpec,
    prev: RiskState,
    snap: MetricsSnapshot,
    now: datetime,
    *,
    book: str = "live",
    capital: Optional[Decimal] = None,
) -> RiskEvaluation:
    """Grade one snapshot against spec.riskLimits; the updated RiskState and any breaches.

    `book` and `capital` say which book the pod that served the read trades and the
    capital it was given: a change of capital between two reads of one book is a flow
    (phasegate.policy.accounting), a change of book starts a new series.

    The sample's time is snap.taken_at (never after `now`). Rates and counter increases
    need a previous sample strictly earlier: a snapshot no newer than the last one
    (re-evaluated, or out of order) is checked for levels only and moves no counter,
    so reconciling twice with the same snapshot changes nothing.
    """
    limits = spec.risk_limits
    t = min(snap.taken_at, now.astimezone(UTC))
    value = snap.portfolio_value
    readings: dict[str, Decimal] = {"portfolioValue": value}
    breaches: list[Breach] = []
    missing: dict[str, str] = {}
    series = prev.book
    new_book = False

    # Every read is folded into the series, even one stamped earlier than the last (a clock
    # stepped back): a loss it shows is real. Folding the same read twice changes nothing
    # (same value, same capital: a return of 1); the decision folds each read once anyway.
    if value.is_finite() and value > 0:
        today = trading_day_of(t, spec.trading_day)
        if series is not None and series.trading_day is not None and today < series.trading_day:
            today = series.trading_day  # a clock stepped back never re-opens yesterday
        cap = capital if capital is not None else (series.last_capital if series and series.last_capital is not None else value)
        moved = accounting.step(series, book, value, cap, today, t)
        series, new_book = moved.book, moved.started
        drawdown, daily_loss = moved.drawdown, moved.daily_loss
        readings.update(drawdown=drawdown, dailyLoss=daily_loss, index=series.index)
        breaches.extend(_loss_breaches(limits, drawdown, daily_loss, book, series))
    else:
        why = f"portfolio value {value} is not a positive number"
        for name in ("maxDrawdown", "maxDailyLoss", "minCashFraction"):
            missing[name] = why

    # Levels the strategy reports.
    if snap.largest_position_fraction is not None and snap.largest_position_fraction < 0:
        missing["maxPositionFraction"] = f"strategy_largest_position_fraction {snap.largest_position_fraction} is negative"
    elif snap.largest_position_fraction is not None:
        pos = snap.largest_position_fraction
        readings["largestPositionFraction"] = pos
        lim = limits.max_position_fraction
        if lim is not None and pos > lim.threshold:
            breaches.append(
                _limit_breach(
                    "maxPositionFraction",
                    lim,
                    pos,
                    f"largest position {pct(pos, lim.threshold)} of portfolio exceeds limit {pct(lim.threshold, pos)}",
                )
            )
    else:
        missing["maxPositionFraction"] = "strategy_largest_position_fraction not exported"

    if snap.cash is not None and value.is_finite() and value > 0:
        cash_fraction = snap.cash / value
        readings["cashFraction"] = cash_fraction
        lim = limits.min_cash_fraction
        if lim is not None and cash_fraction < lim.threshold:
            breaches.append(
                _limit_breach(
                    "minCashFraction",
                    lim,
                    cash_fraction,
                    f"cash {pct(cash_fraction, lim.threshold)} of portfolio ({fmt(snap.cash)} of {fmt(value)}) "
                    f"is below minimum {pct(lim.threshold, cash_fraction)}",
                    lower_is_worse=True,
                )
            )
    elif snap.cash is None:
        missing["minCashFraction"] = "strategy_cash not exported"

    if snap.position_discrepancy is not None and snap.position_discrepancy < 0:
        missing["maxPositionDiscrepancy"] = f"strategy_position_discrepancy_ratio {snap.position_discrepancy} is negative"
    elif snap.position_discrepancy is not None:
        disc = snap.position_discrepancy
        readings["positionDiscrepancy"] = disc
        lim = limits.max_position_discrepancy
        if lim is not None and disc > lim.threshold:
            breaches.append(
                _limit_breach(
                    "maxPositionDiscrepancy",
                    lim,
                    disc,
                    f"position discrepancy {pct(disc, lim.threshold)} against the broker "
                    f"exceeds limit {pct(lim.threshold, disc)}",
                )
            )
    else:
        missing["maxPositionDiscrepancy"] = "strategy_position_discrepancy_ratio not exported"

    for key, v in (
        ("signalAlignment", snap.signal_alignment),
        ("executionQuality", snap.execution_quality),
        ("slippageBps", snap.slippage_bps),
    ):
        if v is not None:
            readings[key] = v
    if snap.order_latency is not None:
        p95 = snap.order_latency.quantile(Decimal("0.95"))
        if p95 is not None:
            readings["orderLatencyP95Seconds"] = p95
        mean = snap.order_latency.mean()
        if mean is not None:
            readings["orderLatencyMeanSeconds"] = mean
    if snap.orders_submitted is not None and snap.orders_filled is not None and snap.orders_submitted > 0:
        readings["fillRate"] = snap.orders_filled / snap.orders_submitted

    # Counters: rates, strategy breaker trips, the phase window.
    prev_counters = _counters(prev.counters)
    snap_counters = snap.counters()
    last = prev.last_sample_at
    advancing = last is None or t > last
    counters, window_counters = prev_counters, _counters(prev.window_counters)
    rate_since, rate_base = prev.rate_since, _counters(prev.rate_counters)
    window_totals = _counters(prev.window_totals)
    circuit: list[Breach] = []
    if advancing:
        inc, restarted, counters = advance_counters(prev_counters, snap_counters)
        # Rates over spec.analysis.rateWindow, not over one scrape interval: a limit in
        # orders per minute read over 1s would trip on every burst and miss nothing more.
        window = parse_duration(spec.analysis.rate_window)
        if rate_since is None or rate_since > t:
            rate_since, rate_base = t, dict(counters)
        elif t - rate_since >= window:
            r_inc, r_restarted, _ = advance_counters(rate_base, snap_counters)
            interval = seconds(t - rate_since)
            for name, key, lim, noun in (
                ("maxOrderRate", C_ORDERS_SUBMITTED, limits.max_order_rate, "order"),
                ("maxErrorRate", C_ERRORS, limits.max_error_rate, "error"),
            ):
                if key not in snap_counters:
                    continue
                # A counter first seen now (no restart) has no known starting point.
                if key not in rate_base and not r_restarted:
                    continue
                rate = r_inc[key] * 60 / interval
                readings[f"{noun}Rate"] = rate
                if lim is not None and rate > lim.threshold:
                    breaches.append(
                        _limit_breach(
                            name,
                            lim,
                            rate,
                            f"{noun} rate {fmt(rate)} per minute ({fmt(r_inc[key])} {noun}s in {fmt(interval)}s"
                            f"{', counters restarted' if r_restarted else ''}) exceeds limit {fmt(lim.threshold)} per minute",
                        )
                    )
            rate_since, rate_base = t, dict(counters)
        # A breaker type first seen now did trip: a labelled counter has no series until
        # its first increment. On the very first sample the process started at zero, so a
        # non-zero count is a trip we must not ignore.
        for key, n in sorted(inc.items()):
            if key.startswith(C_BREAKER_PREFIX) and n > 0:
                btype = key[len(C_BREAKER_PREFIX) :]
                circuit.append(
                    Breach(
                        name=STRATEGY_BREAKER_PREFIX + btype,
                        kind=KIND_CIRCUIT,
                        value=n,
                        limit=ZERO,
                        severity=Severity.CRITICAL,
                        action=Action.HALT,
                        reason=f"the strategy reports its {btype!r} circuit breaker tripped "
                        f"({fmt(n)} trip{'s' if n != 1 else ''} since the previous sample"
                        f"{', counters restarted' if restarted else ''})",
                    )
                )
        w_inc, _, window_counters = advance_counters(window_counters, snap_counters)
        for k, n in w_inc.items():
            window_totals[k] = window_totals.get(k, ZERO) + n
    breaches.extend(circuit)
    for name, key, metric in (
        ("maxOrderRate", C_ORDERS_SUBMITTED, "strategy_orders_submitted_total"),
        ("maxErrorRate", C_ERRORS, "strategy_errors_total"),
    ):
        if key not in snap_counters:
            missing[name] = f"{metric} not exported"
    configured = configured_limits(spec)
    unchecked = {n: why for n, why in missing.items() if n in configured}
    failures = {n: (prev.limit_failures.get(n, 0) + 1 if n in unchecked else 0) for n in configured}

    critical = {b.name for b in breaches if b.kind == KIND_RISK and b.severity == Severity.CRITICAL}
    if not advancing:
        # No rate was measured this time: a rate breach still open stays open, or it
        # would count as a fresh incident at the next sample.
        critical |= set(prev.critical_breaches) & _RATE_LIMITS
    critical_now = sorted(critical)
    onsets = len(set(critical_now) - set(prev.critical_breaches)) + len(circuit)

    state = prev.model_copy(
        update={
            "book": series,
            "limit_failures": {n: c for n, c in failures.items() if c},
            "unchecked": [f"{n}: {why}" for n, why in sorted(unchecked.items())],
            # A rate is measured once per rate window: one still open stays open until measured again.
            "breaching": sorted({b.name for b in breaches if b.kind == KIND_RISK}
                                | (set(prev.breaching) & _RATE_LIMITS if not advancing else set())),
            "last_sample_at": t if advancing else last,
            "rate_since": rate_since,
            "rate_counters": rate_base,
            "counters": counters,
            "window_counters": window_counters,
            "window_totals": window_totals,
            "phase_critical_incidents": prev.phase_critical_incidents + onsets,
            "phase_circuit_trips": prev.phase_circuit_trips + len(circuit),
            "critical_breaches": critical_now,
        }
    )
    return RiskEvaluation(state=state, breaches=tuple(breaches), readings=readings, unchecked=unchecked, new_book=new_book)


def failed_read(spec: StrategySpec, prev: RiskState, why: str) -> RiskState:
    """A read that checked nothing: every configured limit counts one more failure."""
    configured = configured_limits(spec)
    return prev.model_copy(
        update={
            "limit_failures": {n: prev.limit_failures.get(n, 0) + 1 for n in configured},
            "unchecked": [f"{n}: {why}" for n in sorted(configured)],
        }
    )


__all__ = [
    "Breach", "KIND_CIRCUIT", "KIND_RISK", "RiskEvaluation", "STRATEGY_BREAKER_PREFIX",
    "advance_counters", "configured_limits", "day_boundary", "evaluate_risk", "failed_read", "fmt", "pct", "seconds", "severity",
    "trading_day_of",
]
