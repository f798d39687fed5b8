"""Safety rule 5 for real: SIGKILL the operator at random points, repeatedly, while
strategies climb; each strategy must end where it should with exactly one history
entry (and one Event) per transition."""

from __future__ import annotations

import random
import time

import pytest

import plans  # noqa: E402  (tests/support)

from .strategy_env import Strategies, history_actions, install_crd, start_operator, wait_for

EXPECTED = [("start", "paper"), ("advance", "shadow"), ("advance", "live-10"), ("advance", "live-50"), ("complete", "live-100")]
PHASES = [dict(p, minDuration="6s") if p.get("minDuration") not in (None, "0s") else dict(p) for p in plans.COMPRESSED_PHASES]


@pytest.mark.timeout(300)
def test_sigkill_at_random_points_never_duplicates_or_loses_a_transition(k8s, kubeconfig, namespace, tmp_path):
    install_crd(k8s)
    ts = Strategies(k8s, namespace)
    names = ["k1", "k2", "k3"]
    for n in names:
        ts.create(plans.strategy(n, phases=PHASES))
    rng = random.Random(20261122)
    kills = 0
    deadline = time.monotonic() + 200
    run = 0
    while time.monotonic() < deadline:
        op = start_operator(kubeconfig, namespace, tmp_path / f"run{run}")
        run += 1
        if all(ts.status(n).get("state") == "Completed" for n in names):
            time.sleep(3)  # let the final run replay any Event a kill lost
            op.stop()
            break
        time.sleep(rng.uniform(0.2, 1.2))
        op.kill()  # SIGKILL: no cleanup, no chance to finish a write
        kills += 1
    else:
        pytest.fail("strategies did not complete within the time limit")
    assert kills >= 5, f"only {kills} kills: the test did not exercise recovery"
    for n in names:
        st = ts.status(n)
        assert history_actions(st) == EXPECTED, f"{n}: {history_actions(st)}"
        assert [h["seq"] for h in st["history"]] == list(range(1, len(st["history"]) + 1))
        total = len(st["history"])  # the ladder's moves and the two books' series starts
        def all_events(n: str = n, total: int = total):
            got = ts.events_for(n)
            return got if len(got) >= total else None
        events = wait_for(all_events, 20, f"{n}: Events")
        assert sorted(e["metadata"]["name"].rsplit(".", 1)[1] for e in events) == [f"{i:06d}" for i in range(1, total + 1)]
