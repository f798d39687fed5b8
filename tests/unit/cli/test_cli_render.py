"""The renderers are pure functions from an object dict (and the time) to rich renderables."""

from __future__ import annotations

import copy
from datetime import timedelta
from decimal import Decimal

import pytest

from phasegate.api import State, contract
from phasegate.cli import render
from phasegate.cli.model import Strategy
from phasegate.policy.requests import Request, Verb

from .fakes import NOW, emergency_status, halted_status, mid_ladder_status, paused_status, spec, strategy_obj


def text(obj, width=200) -> str:
    return render.to_text(render.render_status(obj, NOW), width=width)


def ladder_row(out: str, phase: str) -> str:
    return next(line for line in out.splitlines() if f"│ {phase} " in line and "│" in line)


def test_mid_ladder_header():
    out = text(strategy_obj(status=mid_ladder_status()))
    assert "momentum" in out and "namespace default" in out
    assert "State Progressing" in out
    assert "Phase live-10 (4/7)" in out
    assert "Fraction 10%" in out
    assert "Ceiling 50% (spec.maxFraction)" in out
    assert "Capital 1,000,000" in out and "In use 100,000" in out
    assert "Age 30d" in out
    assert "live-10: waiting for 7d in phase" in out  # status.message


def test_mid_ladder_ladder_markers():
    out = text(strategy_obj(status=mid_ladder_status()))
    for done in ("backtest", "paper", "shadow"):
        assert "✓ done" in ladder_row(out, done)
    current = ladder_row(out, "live-10")
    assert "▶ current" in current
    assert "2d3h / 7d" in current  # time in phase vs minDuration
    assert "manual" in current and "needs `phasegate promote`" in current
    assert "pending" in ladder_row(out, "live-35")
    assert "above ceiling" in ladder_row(out, "live-65")
    assert "above ceiling" in ladder_row(out, "live-100")
    assert "the ladder stops at live-35" in out
    for col in ("mode", "fraction", "minDuration", "approval"):
        assert col in out
    assert "14d" in ladder_row(out, "paper") and "35%" in ladder_row(out, "live-35")


def test_min_duration_reached_and_approved():
    st = mid_ladder_status(phase_started_at=NOW - timedelta(days=8), holds=[])
    row = ladder_row(text(strategy_obj(status=st)), "live-10")
    assert "8d / 7d ✓" in row
    assert "approved" in row and "needs" not in row


def test_mid_ladder_gates_breakers_conditions_backtest():
    out = text(strategy_obj(status=mid_ladder_status()))
    assert "Gates of live-10" in out
    gate = next(line for line in out.splitlines() if "minDuration" in line and "time in phase" in line)
    assert "2d3h" in gate and "7d" in gate and "✗ fail" in gate
    gate = next(line for line in out.splitlines() if "noCriticalIncident" in line)
    assert "✓ pass" in gate
    brk = next(line for line in out.splitlines() if line.startswith("│ maxDrawdown"))
    assert "Closed" in brk and "0.031" in brk and "0.10" in brk and "halt" in brk
    assert "RiskLimitBreached" in out and "MetricsAvailable" in out
    assert "Backtest" in out and "1.42" in out and "Passed" in out and "2000" in out
    assert "Last request resume by alice 5h ago: Accepted" in out


def test_history_shows_the_last_five():
    out = text(strategy_obj(status=mid_ladder_status()))
    assert "History (last 5)" in out
    hist = out[out.index("History (last 5)"):]
    for seq in (3, 4, 5, 6, 7):
        assert f"reason-{seq}" in hist
    for seq in (1, 2):
        assert f"reason-{seq} " not in hist
    assert "2 earlier entries not shown (`phasegate history momentum` shows them)" in hist


def test_halted_view():
    out = text(strategy_obj(status=halted_status()))
    assert "State Halted" in out and "Fraction 0%" in out
    assert "■ current (Halted)" in ladder_row(out, "live-10")
    brk = next(line for line in out.splitlines() if line.startswith("│ maxDrawdown"))
    assert "Tripped" in brk and "critical" in brk and "halt" in brk and "0.23" in brk
    assert "2026-01-10 11:50:00Z (10m ago)" in brk
    assert "drawdown 23% from the high-water mark" in brk
    # tripped breakers come first
    lines = out.splitlines()
    assert lines.index(brk) < next(i for i, l in enumerate(lines) if l.startswith("│ maxDailyLoss"))
    cond = next(line for line in lines if line.startswith("│ RiskLimitBreached"))
    assert "True" in cond and "MaxDrawdown" in cond
    assert "maxDrawdown 0.23 > 0.10 (critical)" in out  # the halt history entry
    assert "Gates of live-10: none evaluated yet" in out


def test_emergency_record():
    out = text(strategy_obj(status=emergency_status()))
    assert "State EmergencyStopped" in out
    assert "Emergency eeeeeeee" in out
    assert "severity critical" in out and "by bob" in out and "exchange outage" in out and "finished" in out
    step = next(line for line in out.splitlines() if "flatten" in line)
    assert "TimedOut" in step and "300.0s" in step and "3 positions left" in step


def test_no_status_yet():
    out = text(strategy_obj(status=None))
    assert "No status yet" in out and "phasegate run" in out
    assert "State -" in out
    assert "pending" in ladder_row(out, "backtest") and "above ceiling" in ladder_row(out, "live-65")
    assert "Breakers" not in out and "History" not in out


def test_completed_marks_every_rung_done():
    full = spec(max_fraction=Decimal("1"))
    st = mid_ladder_status(phase="live-100", phase_index=6, state=State.COMPLETED, capital_fraction=Decimal("1"))
    out = text(strategy_obj(the_spec=full, status=st))
    for p in ("backtest", "live-10", "live-65", "live-100"):
        assert "✓ done" in ladder_row(out, p)
    assert "above ceiling" not in out


def test_paused_marker():
    out = text(strategy_obj(status=paused_status()))
    row = ladder_row(out, "live-10")
    assert "‖ current (Paused)" in row and "needs" not in row


def test_pending_and_unreadable_request_annotation():
    req = Request(id="b" * 32, verb=Verb.PAUSE, reason="vol spike", by="carol", at=NOW - timedelta(seconds=30))
    obj = strategy_obj(status=mid_ladder_status(), annotations={contract.ANNOTATION_REQUEST: req.to_annotation()})
    out = text(obj)
    assert "Pending request pause by carol 30s ago: 'vol spike'" in out
    assert "not yet answered" in out
    obj = strategy_obj(status=mid_ladder_status(), annotations={contract.ANNOTATION_REQUEST: "{not json"})
    assert "Unreadable request annotation" in text(obj)


def test_answered_request_is_not_pending():
    st = mid_ladder_status()
    req = Request(id=st.last_request.id, verb=Verb.RESUME, reason="ok", by="alice", at=NOW)
    obj = strategy_obj(status=st, annotations={contract.ANNOTATION_REQUEST: req.to_annotation()})
    assert Strategy.from_obj(obj).pending is None
    assert "Pending request" not in text(obj)


def test_status_with_unknown_and_bad_fields_still_renders():
    obj = strategy_obj(status=mid_ladder_status())
    obj["status"]["kopf"] = {"progress": {}}  # unknown top-level field: ignored
    assert "status does not parse" not in text(obj)
    obj["status"]["breakers"] = {"x": {"state": "Weird"}}  # a bad field: reported, rest shown
    out = text(obj)
    assert "status does not parse" in out and "status.breakers" in out
    assert "Phase live-10 (4/7)" in out


def test_spec_that_does_not_parse():
    obj = strategy_obj(status=mid_ladder_status())
    obj["spec"]["maxFraction"] = 7
    out = text(obj)
    assert "spec does not parse" in out and "spec.maxFraction" in out
    assert "Ceiling 700%" in out  # raw value still shown


def test_render_is_pure():
    obj = strategy_obj(status=halted_status())
    before = copy.deepcopy(obj)
    assert text(obj) == text(obj)
    assert obj == before


def test_history_renderer_limit_and_dropped_entries():
    st = mid_ladder_status()
    st = st.model_copy(update={"history": st.history[2:]})  # seq 3..7 kept: 2 dropped by historyLimit
    out = render.to_text(render.render_history(strategy_obj(status=st), NOW, 2))
    assert "History of default/momentum" in out
    assert "reason-6" in out and "reason-7" in out and "reason-5" not in out
    assert "3 earlier entries not shown (--limit 0 shows all)" in out
    assert "2 older entries dropped from status (spec.historyLimit)" in out
    out = render.to_text(render.render_history(strategy_obj(status=st), NOW, None))
    assert all(f"reason-{i}" in out for i in (3, 4, 5, 6, 7))
    out = render.to_text(render.render_history(strategy_obj(status=None), NOW, None))
    assert "no entries yet" in out


def test_list_table():
    objs = [
        strategy_obj("momentum", "trading", status=mid_ladder_status()),
        strategy_obj("meanrev", "research", status=halted_status()),
        strategy_obj("fresh", "trading", status=None),
    ]
    out = render.to_text(render.render_list(objs, NOW, all_namespaces=True))
    header = out.splitlines()[0].split()
    assert header == ["NAMESPACE", "NAME", "PHASE", "STATE", "FRACTION", "READY", "REASON", "AGE"]
    rows = {line.split()[1]: line.split() for line in out.splitlines()[1:] if line.strip()}
    assert rows["momentum"] == ["trading", "momentum", "live-10", "Progressing", "10%", "True", "Progressing", "30d"]
    assert rows["meanrev"] == ["research", "meanrev", "live-10", "Halted", "0%", "False", "Halted", "30d"]
    assert rows["fresh"][2:] == ["-", "-", "-", "-", "-", "30d"]
    # sorted by namespace, then name
    assert [r.split()[1] for r in out.splitlines()[1:] if r.strip()] == ["meanrev", "fresh", "momentum"]
    out = render.to_text(render.render_list(objs[:1], NOW, all_namespaces=False))
    assert out.splitlines()[0].split()[0] == "NAME"


@pytest.mark.parametrize(
    "delta,expected",
    [
        (timedelta(seconds=5), "5s"),
        (timedelta(seconds=119), "119s"),
        (timedelta(minutes=3, seconds=20), "3m20s"),
        (timedelta(minutes=45), "45m"),
        (timedelta(hours=5, minutes=12), "5h12m"),
        (timedelta(hours=20), "20h"),
        (timedelta(days=3, hours=4), "3d4h"),
        (timedelta(days=120), "120d"),
        (timedelta(seconds=-3), "0s"),
        (None, "-"),
    ],
)
def test_human_duration(delta, expected):
    assert render.human_duration(delta) == expected


@pytest.mark.parametrize(
    "value,expected",
    [(Decimal("0.1"), "10%"), ("0.35", "35%"), (Decimal("0.355"), "35.5%"), (1, "100%"), (0, "0%"), (None, "-")],
)
def test_pct(value, expected):
    assert render.pct(value) == expected


def test_money():
    assert render.money("1000000") == "1,000,000"
    assert render.money(Decimal("2500.50")) == "2,500.50"
    assert render.money(None) == "-"
