"""Leader election for real: two operators on the local control plane, one Lease.

(a) SIGKILL the leader again and again while strategies climb: the standby takes over within
    the lease duration and finishes the ladder, with exactly one history entry per transition.
(b) SIGSTOP the leader past its renew deadline: the standby takes over; after SIGCONT the old
    leader says it stopped leading and writes nothing. Checked by the apiserver, not only by
    the operator's word: every operator writes with the user agent `phasegate@<identity>`, so
    the strategy's managedFields name who last wrote its status, and when.

Short lease settings (4s / 3s / 0.5s) and the dead-holder shortcut off, so a successor waits
for the lease to expire as it would in another pod.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from typing import Any, Optional

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

import plans  # noqa: E402  (tests/support)

from .strategy_env import Strategies, history_actions, install_crd, start_operator, wait_for

LEASE = "phasegate-leader"
DURATION, DEADLINE, RETRY = 4.0, 3.0, 0.5
ENV = {
    "PHASEGATE_LEASE_DURATION": str(DURATION),
    "PHASEGATE_RENEW_DEADLINE": str(DEADLINE),
    "PHASEGATE_RETRY_PERIOD": str(RETRY),
    "PHASEGATE_LEASE_DEAD_HOLDER_CHECK": "false",
}
EXPECTED = [("start", "paper"), ("advance", "shadow"), ("advance", "live-10"), ("advance", "live-50"), ("complete", "live-100")]
PHASES = [dict(p, minDuration="4s") if p.get("minDuration") not in (None, "0s") else dict(p) for p in plans.COMPRESSED_PHASES]


def identity(op) -> str:
    return f"{socket.gethostname()}_{op.proc.pid}"


def holder(k8s, ns: str) -> Optional[str]:
    try:
        return client.CoordinationV1Api(k8s).read_namespaced_lease(LEASE, ns).spec.holder_identity or None
    except ApiException as e:
        if e.status == 404:
            return None
        raise


def check_history(ts: Strategies, name: str) -> None:
    st = ts.status(name)
    assert history_actions(st) == EXPECTED, f"{name}: {history_actions(st)}"
    assert [h["seq"] for h in st["history"]] == list(range(1, len(st["history"]) + 1)), name
    total = len(st["history"])

    def all_events():
        got = ts.events_for(name)
        return got if len(got) >= total else None

    events = wait_for(all_events, 20, f"{name}: Events")
    assert sorted(e["metadata"]["name"].rsplit(".", 1)[1] for e in events) == [f"{i:06d}" for i in range(1, total + 1)]


def healthz(op) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{op.liveness_port}/healthz", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, None


def leader_gauge(op) -> dict[str, float]:
    out = {}
    for line in op.metrics_text().splitlines():
        if line.startswith("phasegate_leader{"):
            ident = line.split('identity="', 1)[1].split('"', 1)[0]
            out[ident] = float(line.rsplit(" ", 1)[1])
    return out


@pytest.mark.timeout(240)
def test_sigkill_the_leader_mid_ladder_the_standby_takes_over_and_finishes(k8s, kubeconfig, namespace, tmp_path):
    install_crd(k8s)
    ts = Strategies(k8s, namespace)
    ops = [start_operator(kubeconfig, namespace, tmp_path / "op0", env=ENV)]
    wait_for(lambda: holder(k8s, namespace) == identity(ops[0]), 10, "the first operator leads")
    ops.append(start_operator(kubeconfig, namespace, tmp_path / "op1", env=ENV))
    rng = random.Random(20261210)
    failovers: list[float] = []
    wave, names, done = 0, [], []
    deadline = time.monotonic() + 150
    try:
        while time.monotonic() < deadline and len(failovers) < 20:
            if not names or all(ts.status(n).get("state") == "Completed" for n in names):
                done += names
                names = [f"w{wave}-a", f"w{wave}-b"]
                wave += 1
                for n in names:
                    ts.create(plans.strategy(n, phases=PHASES))
            time.sleep(rng.uniform(0.5, 3.0))  # somewhere in the ladder
            by_id = {identity(o): o for o in ops if o.proc.poll() is None}
            lead_id = holder(k8s, namespace)
            assert lead_id in by_id, f"the lease names {lead_id}, not a running operator {list(by_id)}"
            (standby,) = [o for i, o in by_id.items() if i != lead_id]
            killed_at = time.monotonic()
            by_id[lead_id].kill()  # SIGKILL: no release, no cleanup
            new_id = wait_for(
                lambda old=lead_id: (lambda h: h if h not in (None, old) else None)(holder(k8s, namespace)),
                DURATION + 4, "the standby takes the lease", interval=0.05,
            )
            failovers.append(time.monotonic() - killed_at)
            assert new_id == identity(standby)
            ops = [standby, start_operator(kubeconfig, namespace, tmp_path / f"op{len(ops) + len(failovers)}", env=ENV)]
        for n in names:  # the last wave finishes under the last leader
            ts.wait(n, lambda s: s.get("state") == "Completed", 90, "Completed")
        done += names
        def one_healthy_leader():
            seen = [healthz(o) for o in ops]
            leaders = [b for c, b in seen if c == 200 and b and b["leader"]["leading"] is True and b["watchdog"] == "ok"]
            return leaders if len(leaders) == 1 else None
        wait_for(one_healthy_leader, 10, "exactly one replica leading, its watchdog ok")
    finally:
        for o in ops:
            o.stop()
    print(f"\nleader failovers after SIGKILL: {len(failovers)}, seconds: "
          f"min {min(failovers):.2f} median {sorted(failovers)[len(failovers) // 2]:.2f} max {max(failovers):.2f}; "
          f"strategies completed: {len(done)}")
    assert len(failovers) >= 5, f"only {len(failovers)} failovers"
    assert max(failovers) <= DURATION + RETRY + 1.5, failovers
    for n in done:
        check_history(ts, n)


def _manager_times(obj: dict[str, Any], manager: str, subresource: str = "status") -> list[datetime]:
    return [
        datetime.fromisoformat(m["time"].replace("Z", "+00:00"))
        for m in obj["metadata"].get("managedFields") or []
        if m.get("manager") == manager and (m.get("subresource") or "") == subresource
    ]


def _log_after(op, event: str, after: datetime) -> list[dict[str, Any]]:
    return [
        line for line in op.log_lines()
        if line.get("event") == event and datetime.fromisoformat(line["timestamp"].replace("Z", "+00:00")) > after
    ]


@pytest.mark.timeout(180)
def test_sigstop_the_leader_past_its_deadline_it_writes_nothing_after_it_resumes(k8s, kubeconfig, namespace, tmp_path):
    install_crd(k8s)
    ts = Strategies(k8s, namespace)
    a = start_operator(kubeconfig, namespace, tmp_path / "a", env=ENV)
    wait_for(lambda: holder(k8s, namespace) == identity(a), 10, "a leads")
    b = start_operator(kubeconfig, namespace, tmp_path / "b", env=ENV)
    a_id, b_id = identity(a), identity(b)
    try:
        assert leader_gauge(a) == {a_id: 1.0} and leader_gauge(b) == {b_id: 0.0}
        ts.create(plans.strategy("frozen", phases=PHASES))
        ts.wait("frozen", lambda s: s.get("phase") == "shadow", 60, "shadow")
        assert _manager_times(ts.get("frozen"), f"phasegate@{a_id}"), "a wrote status, under its own name"
        stopped_at = time.monotonic()
        a.proc.send_signal(signal.SIGSTOP)
        wait_for(lambda: holder(k8s, namespace) == b_id, DURATION + 4, "b takes the lease", interval=0.05)
        takeover = time.monotonic() - stopped_at
        wait_for(lambda: _manager_times(ts.get("frozen"), f"phasegate@{b_id}"), 20, "b writes status")
        time.sleep(1.0)
        resumed = datetime.now(UTC).replace(microsecond=0)
        time.sleep(1.0)
        a.proc.send_signal(signal.SIGCONT)
        # a resumes with its loops due and its event loop behind: whatever it tries is fenced
        ts.wait("frozen", lambda s: s.get("state") == "Completed", 90, "Completed under b")
        time.sleep(2.0)
        obj = ts.get("frozen")
        # The apiserver's record: a's last status write came before it was resumed.
        a_times = _manager_times(obj, f"phasegate@{a_id}")
        assert all(t < resumed for t in a_times), (a_times, resumed)
        assert _manager_times(obj, f"phasegate@{b_id}"), "b wrote status"
        # a's own account: it stopped leading, then decided and wrote nothing.
        stop_lines = [line for line in a.log_lines() if line.get("event") == "stopped leading"]
        assert stop_lines, a.tail()
        assert not _log_after(a, "transition", resumed), "the old leader decided a transition after it resumed"
        assert leader_gauge(a) == {a_id: 0.0} and leader_gauge(b) == {b_id: 1.0}
        refused = _log_after(a, "write refused: not leading", resumed)
        assert holder(k8s, namespace) == b_id
        check_history(ts, "frozen")
        print(f"\nSIGSTOP takeover after {takeover:.2f}s; writes the resumed leader tried and was refused: {len(refused)}")
    finally:
        if a.proc and a.proc.poll() is None:
            a.proc.send_signal(signal.SIGCONT)
        a.stop()
        b.stop()


@pytest.mark.timeout(120)
def test_sigterm_the_leader_hands_the_lease_over_before_its_shutdown(k8s, kubeconfig, namespace, tmp_path):
    """A pod deleted, a rollout: SIGTERM. The leader releases the lease before kopf begins its
    shutdown (cancelling watchers and daemons takes seconds under load), so the standby leads
    within a retry period instead of waiting out the lease or racing the pod that replaces it."""
    install_crd(k8s)
    ts = Strategies(k8s, namespace)
    a = start_operator(kubeconfig, namespace, tmp_path / "a", env=ENV)
    wait_for(lambda: holder(k8s, namespace) == identity(a), 10, "a leads")
    b = start_operator(kubeconfig, namespace, tmp_path / "b", env=ENV)
    b_id = identity(b)
    try:
        for n in ("term-a", "term-b"):
            ts.create(plans.strategy(n, phases=PHASES))
        ts.wait("term-a", lambda s: s.get("phase") == "shadow", 60, "shadow")
        termed = time.monotonic()
        os.killpg(a.proc.pid, signal.SIGTERM)
        wait_for(lambda: holder(k8s, namespace) == b_id, DURATION + 4, "b takes the lease", interval=0.05)
        takeover = time.monotonic() - termed
        a.proc.wait(30)
        events = [line.get("event", "") for line in a.log_lines()]
        released = events.index("released the leader lease") if "released the leader lease" in events else None
        assert released is not None, a.tail()
        stopping = [i for i, e in enumerate(events) if "Operator is stopping" in e]
        assert stopping, a.tail()
        assert released < stopping[0], "the lease was released only after kopf began its shutdown"
        # Released, not expired: the standby did not wait for the lease duration.
        assert takeover < DURATION, f"the standby took {takeover:.2f}s, the lease duration is {DURATION}s"
        for n in ("term-a", "term-b"):
            ts.wait(n, lambda s: s.get("state") == "Completed", 90, f"{n} Completed under b")
            check_history(ts, n)
        print(f"\nSIGTERM takeover after {takeover:.2f}s")
    finally:
        a.stop()
        b.stop()
