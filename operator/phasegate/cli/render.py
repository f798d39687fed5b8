"""Pure renderers: a TradingStrategy object (a dict, as the apiserver returns it) and the
current time in, a rich renderable out. No cluster, no clock, no printing.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Optional

from rich.console import Console, Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from phasegate.api import BreakerState, State, StrategySpec, StrategyStatus
from phasegate.api.status import HoldKind, RequestOutcome

from .model import Strategy, parse_time

HISTORY_IN_STATUS = 5

STATE_STYLE = {
    State.PENDING.value: "dim",
    State.VALIDATING.value: "cyan",
    State.PROGRESSING.value: "green",
    State.PAUSED.value: "yellow",
    State.HALTED.value: "bold red",
    State.EMERGENCY_STOPPED.value: "bold white on red",
    State.COMPLETED.value: "bold cyan",
    State.FAILED.value: "bold red",
}


# --- formatting helpers ---------------------------------------------------------


def human_duration(delta: Optional[timedelta]) -> str:
    """kubectl-style short durations: 45s, 3m20s, 5h12m, 3d4h, 120d."""
    if delta is None:
        return "-"
    s = int(delta.total_seconds())
    if s < 0:
        return "0s"
    if s < 120:
        return f"{s}s"
    m, s = divmod(s, 60)
    if m < 10:
        return f"{m}m{s}s" if s else f"{m}m"
    h, m = divmod(m, 60)
    if h < 3:
        return f"{h * 60 + m}m" if h == 0 else (f"{h}h{m}m" if m else f"{h}h")
    d, h = divmod(h, 24)
    if d < 2:
        hours = d * 24 + h
        return f"{hours}h{m}m" if hours < 8 and m else f"{hours}h"
    if d < 8:
        return f"{d}d{h}h" if h else f"{d}d"
    return f"{d}d"


def pct(value: Any) -> str:
    """0.1 -> 10%, 0.355 -> 35.5%; '-' when absent."""
    if value is None or value == "":
        return "-"
    try:
        d = Decimal(str(value)) * 100
    except Exception:
        return str(value)
    text = format(d.normalize(), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return f"{text}%"


def money(value: Any) -> str:
    if value is None or value == "":
        return "-"
    try:
        d = Decimal(str(value))
    except Exception:
        return str(value)
    if d == d.to_integral_value():
        return f"{d.quantize(Decimal(1)):,}"
    return f"{d:,}"


def ago(when: Optional[datetime], now: datetime) -> str:
    return "-" if when is None else f"{human_duration(now - when)} ago"


def stamp(when: Optional[datetime]) -> str:
    return "-" if when is None else when.strftime("%Y-%m-%d %H:%M:%SZ")


def state_text(state: Optional[str]) -> Text:
    if not state:
        return Text("-", style="dim")
    return Text(state, style=STATE_STYLE.get(state, ""))


def to_text(renderable: RenderableType, width: int = 160) -> str:
    """Plain text of a renderable, for tests and for logs."""
    console = Console(file=io.StringIO(), width=width, record=True, color_system=None, force_terminal=False)
    console.print(renderable)
    return console.export_text()


# --- status ---------------------------------------------------------------------


def render_status(obj: dict[str, Any], now: datetime) -> RenderableType:
    """The full view of one strategy: header, ladder, gates, breakers, conditions,
    backtest, emergency, requests and the last history entries."""
    s = Strategy.from_obj(obj)
    st = s.status
    parts: list[RenderableType] = [_header(s, now)]
    if s.spec_error:
        parts.append(Panel(Text(s.spec_error), title="spec does not parse", border_style="red"))
    if s.status_error:
        parts.append(
            Panel(
                Text(f"{s.status_error}\n(shown: the fields that did parse; is the CLI older than the operator?)"),
                title="status does not parse",
                border_style="yellow",
            )
        )
    if not s.has_status:
        parts.append(
            Text(
                "No status yet: the operator has not reconciled this strategy. Is it running? "
                "(`kubectl -n phasegate-system get pods`, or `phasegate run` locally)",
                style="yellow",
            )
        )
    if s.spec is not None:
        parts.append(_ladder(s.spec, st, now))
    if s.has_status:
        parts.append(_gates(s.spec, st))
        parts.append(_breakers(st, now))
    if st.holds:
        parts.append(_holds(st, now))
    if st.conditions:
        parts.append(_conditions(st, now))
    if st.backtest is not None:
        parts.append(_backtest(st))
    if st.emergency is not None:
        parts.append(_emergency(st, now))
    req = _requests(s, now)
    if req is not None:
        parts.append(req)
    if s.has_status:
        parts.append(
            history_table(
                st, now, HISTORY_IN_STATUS, title=f"History (last {HISTORY_IN_STATUS})",
                more=f"`phasegate history {s.name}` shows them",
            )
        )
    return Group(*parts)


def leader_line(lease: dict[str, Any], now: datetime) -> Optional[Text]:
    """Who acts: the holder of the operator's leader Lease, and when it last renewed it."""
    spec = lease.get("spec") or {}
    meta = lease.get("metadata") or {}
    where = f"{meta.get('namespace', '?')}/{meta.get('name', '?')}"
    holder = spec.get("holderIdentity") or ""
    renewed = parse_time(spec.get("renewTime"))
    duration = spec.get("leaseDurationSeconds") or 0
    if not holder:
        return Text(f"operator leader: none (lease {where} released)", style="yellow")
    expired = renewed is None or (now - renewed).total_seconds() > duration
    text = Text.assemble("operator leader: ", (holder, "bold"), f" (lease {where}, renewed {ago(renewed, now)}")
    text.append(", expired: a standby takes over)" if expired else ")", style="yellow" if expired else "")
    return text


def _header(s: Strategy, now: datetime) -> RenderableType:
    st, spec = s.status, s.spec
    grid = Table.grid(padding=(0, 3))
    for _ in range(4):
        grid.add_column()
    n_phases = len(spec.phases) if spec else 0
    phase = st.phase or "-"
    if st.phase and n_phases:
        phase = f"{st.phase} ({st.phase_index + 1}/{n_phases})"
    ceiling = pct(spec.max_fraction) if spec else pct((s.obj.get("spec") or {}).get("maxFraction"))
    capital = money(spec.capital) if spec else money((s.obj.get("spec") or {}).get("capital"))
    at_risk = money(st.capital) if st.capital is not None else "-"
    grid.add_row(
        Text.assemble(("State ", "bold"), state_text(st.state.value if s.has_status else None)),
        Text.assemble(("Phase ", "bold"), phase),
        Text.assemble(("Fraction ", "bold"), pct(st.capital_fraction) if s.has_status else "-"),
        Text.assemble(("Ceiling ", "bold"), f"{ceiling} (spec.maxFraction)"),
    )
    grid.add_row(
        Text.assemble(("Capital ", "bold"), capital),
        Text.assemble(("In use ", "bold"), at_risk),
        Text.assemble(("Account ", "bold"), spec.account if spec else "-"),
        Text.assemble(("Age ", "bold"), human_duration(now - s.created) if s.created else "-"),
    )
    body: list[RenderableType] = [grid]
    if st.message:
        body.append(Text(st.message, style="italic"))
    title = f"[bold]{s.name}[/bold]  [dim]namespace[/dim] {s.namespace or '-'}"
    border = "red" if st.state.value in ("Halted", "EmergencyStopped", "Failed") and s.has_status else "blue"
    return Panel(Group(*body), title=title, title_align="left", border_style=border)


def _min_duration(spec_phase: Any) -> timedelta:
    return spec_phase.min_duration_delta


def _marker(i: int, phase: Any, spec: StrategySpec, st: StrategyStatus, now: datetime, started: bool) -> Text:
    ceiling = spec.ceiling_index()
    if not started:
        if i > ceiling:
            return Text("above ceiling", style="magenta")
        return Text("pending", style="dim")
    if i < st.phase_index or (i == st.phase_index and st.state is State.COMPLETED):
        return Text("✓ done", style="green")
    if i == st.phase_index:
        since = st.phase_started_at
        elapsed = now - since if since else None
        minimum = _min_duration(phase)
        out = Text("▶ current", style="bold green")
        if st.state in (State.HALTED, State.EMERGENCY_STOPPED, State.FAILED):
            out = Text(f"■ current ({st.state.value})", style="bold red")
        elif st.state is State.PAUSED:
            out = Text("‖ current (Paused)", style="bold yellow")
        out.append(f"  {human_duration(elapsed)} / {human_duration(minimum) if minimum else '0s'}")
        if elapsed is not None and minimum and elapsed >= minimum:
            out.append(" ✓", style="green")
        if phase.approval.value == "manual":
            waiting = any(h.kind is HoldKind.APPROVAL_WAIT and h.visit == st.visit for h in st.holds)
            if not waiting:
                out.append("  approved", style="green")
            elif st.state is State.PROGRESSING:
                out.append("  needs `phasegate promote`", style="yellow")
        return out
    if i > ceiling:
        return Text("above ceiling", style="magenta")
    return Text("pending", style="dim")


def _ladder(spec: StrategySpec, st: StrategyStatus, now: datetime) -> RenderableType:
    t = Table(title="Ladder", title_justify="left", title_style="bold", expand=False)
    for col in ("#", "phase", "mode", "fraction", "minDuration", "approval", ""):
        t.add_column(col)
    started = bool(st.phase) and st.state is not State.PENDING
    ceiling = spec.ceiling_index()
    for i, p in enumerate(spec.phases):
        style = "bold" if started and i == st.phase_index else ("dim" if i > ceiling else "")
        t.add_row(
            str(i + 1),
            p.name,
            p.mode.value,
            pct(p.fraction),
            p.min_duration or human_duration(p.min_duration_delta),
            p.approval.value,
            _marker(i, p, spec, st, now, started),
            style=style,
        )
    note = Text(
        f"ceiling spec.maxFraction = {pct(spec.max_fraction)}: the ladder stops at {spec.phases[ceiling].name}",
        style="dim",
    )
    return Group(t, note)


def _gates(spec: Optional[StrategySpec], st: StrategyStatus) -> RenderableType:
    phase = st.phase or "-"
    if not st.gates:
        return Text(f"Gates of {phase}: none evaluated yet", style="dim")
    t = Table(title=f"Gates of {phase}", title_justify="left", title_style="bold")
    for col in ("gate", "value", "threshold", "result", "message"):
        t.add_column(col)
    for g in st.gates:
        t.add_row(
            g.name,
            g.value if g.value is not None else "-",
            g.threshold if g.threshold is not None else "-",
            Text("✓ pass", style="green") if g.passed else Text("✗ fail", style="red"),
            g.message,
        )
    return t


def _breakers(st: StrategyStatus, now: datetime) -> RenderableType:
    if not st.breakers:
        return Text("Breakers: none reported yet", style="dim")
    t = Table(title="Breakers", title_justify="left", title_style="bold")
    for col in ("breaker", "state", "value", "limit", "severity", "action", "trippedAt", "reason"):
        t.add_column(col)
    order = sorted(st.breakers.items(), key=lambda kv: (kv[1].state is not BreakerState.TRIPPED, kv[0]))
    for name, b in order:
        tripped = b.state is BreakerState.TRIPPED
        t.add_row(
            name,
            Text(b.state.value, style="bold red" if tripped else "green"),
            str(b.value) if b.value is not None else "-",
            str(b.limit) if b.limit is not None else "-",
            b.severity.value if b.severity else "-",
            b.action.value if b.action else "-",
            f"{stamp(b.tripped_at)} ({ago(b.tripped_at, now)})" if b.tripped_at else "-",
            b.reason,
        )
    return t


def _conditions(st: StrategyStatus, now: datetime) -> RenderableType:
    t = Table(title="Conditions", title_justify="left", title_style="bold")
    for col in ("type", "status", "reason", "since", "message"):
        t.add_column(col)
    for c in st.conditions:
        bad = c.type in ("RiskLimitBreached", "CircuitBreakerTripped", "Halted")
        style = ("bold red" if bad else "green") if c.status == "True" else ("yellow" if not bad else "")
        t.add_row(c.type, Text(c.status, style=style), c.reason, ago(c.last_transition_time, now), c.message)
    return t


def _backtest(st: StrategyStatus) -> RenderableType:
    b = st.backtest
    assert b is not None
    t = Table.grid(padding=(0, 2))
    t.add_column(style="bold")
    t.add_column()
    t.add_row("job", b.job or "-")
    style = {"Passed": "green", "Failed": "red"}.get(b.outcome, "yellow")
    t.add_row("outcome", Text(b.outcome or "-", style=style))
    t.add_row("sharpe", str(b.sharpe) if b.sharpe is not None else "-")
    t.add_row("max drawdown", pct(b.max_drawdown) if b.max_drawdown is not None else "-")
    t.add_row("walk-forward windows", str(b.walk_forward_windows) if b.walk_forward_windows is not None else "-")
    t.add_row("Monte Carlo runs", str(b.monte_carlo_runs) if b.monte_carlo_runs is not None else "-")
    if b.message:
        t.add_row("message", b.message)
    return Panel(t, title="Backtest", title_align="left", border_style=style)


def _emergency(st: StrategyStatus, now: datetime) -> RenderableType:
    e = st.emergency
    assert e is not None
    head = Text.assemble(
        ("severity ", "bold"), (e.severity, "bold red" if e.severity == "critical" else "red"),
        ("  by ", "bold"), e.by,
        ("  started ", "bold"), f"{stamp(e.started_at)} ({ago(e.started_at, now)})",
        ("  ", ""), ("finished" if e.finished else "RUNNING", "green" if e.finished else "bold yellow"),
        "\n", ("reason ", "bold"), e.reason,
    )
    body: list[RenderableType] = [head]
    if e.steps:
        t = Table(expand=False)
        for col in ("step", "outcome", "started", "took", "message"):
            t.add_column(col)
        for step in e.steps:
            style = {"Succeeded": "green", "Skipped": "dim", "Running": "yellow"}.get(step.outcome, "red")
            took = f"{step.duration_seconds:.1f}s" if step.duration_seconds is not None else "-"
            t.add_row(step.name, Text(step.outcome, style=style), stamp(step.started_at), took, step.message)
        body.append(t)
    return Panel(Group(*body), title=f"Emergency {e.id[:8]}", title_align="left", border_style="red")


def _holds(st: StrategyStatus, now: datetime) -> RenderableType:
    """What holds the strategy, and the one way out of each."""
    way_out = {
        HoldKind.MANUAL_PAUSE: "phasegate resume",
        HoldKind.RISK_PAUSE: "phasegate resume, once the limit is back in bounds",
        HoldKind.METRICS_PAUSE: "phasegate resume, once every limit is checked",
        HoldKind.APPROVAL_WAIT: "phasegate promote",
        HoldKind.HALT: "phasegate reset --halt ID",
        HoldKind.EMERGENCY: "phasegate reset --halt ID, once the sequence finished",
        HoldKind.SPEC_INVALID: "fix the spec (kubectl apply)",
        HoldKind.FAILED: "fix the spec: a new generation retries",
    }
    t = Table(title="Holds", title_justify="left", title_style="bold", expand=False)
    for col in ("id", "kind", "source", "since", "by", "way out", "reason"):
        t.add_column(col)
    for h in sorted(st.holds, key=lambda h: h.seq):
        stopping = h.kind in (HoldKind.HALT, HoldKind.EMERGENCY)
        t.add_row(h.id, Text(h.kind.value, style="bold red" if stopping else "yellow"), h.source, ago(h.since, now),
                  h.by, way_out.get(h.kind, ""), h.reason)
    return t


def _requests(s: Strategy, now: datetime) -> Optional[RenderableType]:
    lines: list[Text] = []
    last = s.status.last_request
    if last is not None:
        style = "green" if last.outcome is RequestOutcome.ACCEPTED else "red"
        lines.append(
            Text.assemble(
                ("Last request ", "bold"), f"{last.action} by {last.by or '?'} {ago(last.at, now)}: ",
                (last.outcome, style), f" {last.message}" if last.message else "", (f"  [{last.id[:8]}]", "dim"),
            )
        )
    if s.pending is not None:
        p = s.pending
        lines.append(
            Text.assemble(
                ("Pending request ", "bold yellow"),
                f"{p.verb.value} by {p.by} {ago(p.at, now)}: {p.reason!r} ",
                ("(written, not yet answered by the operator)", "yellow"), (f"  [{p.id[:8]}]", "dim"),
            )
        )
    if s.annotation_error:
        lines.append(Text(f"Unreadable request annotation: {s.annotation_error}", style="red"))
    return Group(*lines) if lines else None


# --- history --------------------------------------------------------------------


def history_table(
    st: StrategyStatus, now: datetime, limit: Optional[int], title: str = "History", more: str = "raise --limit"
) -> RenderableType:
    entries = sorted(st.history, key=lambda h: h.seq)
    if not entries:
        return Text(f"{title}: no entries yet", style="dim")
    shown = entries[-limit:] if limit else entries
    t = Table(title=title, title_justify="left", title_style="bold")
    for col in ("#", "at", "action", "from", "to", "fraction", "by", "reason"):
        t.add_column(col)
    for h in shown:
        t.add_row(
            str(h.seq),
            f"{stamp(h.at)} ({ago(h.at, now)})",
            Text(h.action, style="bold red" if h.action in ("halt", "emergency") else ""),
            h.from_ or "-",
            h.to or "-",
            pct(h.fraction) if h.fraction is not None else "-",
            h.by,
            h.reason,
        )
    older = entries[0].seq - 1
    hidden = len(entries) - len(shown)
    notes = []
    if hidden:
        notes.append(f"{hidden} earlier entries not shown ({more})")
    if older > 0:
        notes.append(f"{older} older entries dropped from status (spec.historyLimit)")
    if notes:
        return Group(t, Text("; ".join(notes), style="dim"))
    return t


def render_history(obj: dict[str, Any], now: datetime, limit: Optional[int]) -> RenderableType:
    s = Strategy.from_obj(obj)
    title = f"History of {s.namespace}/{s.name}"
    return history_table(s.status, now, limit, title=title, more="--limit 0 shows all")


# --- list -----------------------------------------------------------------------


def _ready(status: dict[str, Any]) -> tuple[str, str]:
    for c in status.get("conditions") or []:
        if isinstance(c, dict) and c.get("type") == "Ready":
            return str(c.get("status", "")), str(c.get("reason", ""))
    return "", ""


def render_list(objs: Iterable[dict[str, Any]], now: datetime, all_namespaces: bool) -> RenderableType:
    """The table of `phasegate list`. Reads the raw dicts, so an object the models
    refuse still gets its row."""
    t = Table(box=None, header_style="bold", pad_edge=False)
    cols = (["NAMESPACE"] if all_namespaces else []) + ["NAME", "PHASE", "STATE", "FRACTION", "READY", "REASON", "AGE"]
    for col in cols:
        t.add_column(col)
    rows = sorted(objs, key=lambda o: ((o.get("metadata") or {}).get("namespace", ""), (o.get("metadata") or {}).get("name", "")))
    for o in rows:
        meta = o.get("metadata") or {}
        status = o.get("status") or {}
        ready, reason = _ready(status)
        created = parse_time(meta.get("creationTimestamp"))
        row = [meta.get("namespace", "")] if all_namespaces else []
        row += [
            meta.get("name", ""),
            status.get("phase") or "-",
            state_text(status.get("state")),
            pct(status.get("capitalFraction", 0)) if status else "-",
            Text(ready or "-", style={"True": "green", "False": "red"}.get(ready, "dim")),
            reason or "-",
            human_duration(now - created) if created else "-",
        ]
        t.add_row(*row)
    return t


__all__ = [
    "ago", "history_table", "human_duration", "money", "pct", "render_history", "render_list",
    "render_status", "stamp", "to_text",
]
