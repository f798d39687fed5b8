"""`make demo` / `make demo-down`: the whole phasegate story on one machine.

up:   local control plane (built on first use), the CRD, the operator, then
      strategies/demo.yaml climbing backtest -> paper -> shadow -> live 10/35/65/100,
      a `phasegate promote` at the manual rung, a market crash, the drawdown breaker
      halting it, and a summary with the command that would reset it.
down: stops the operator and the control plane the demo started.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "hack" / "cluster"))
sys.path.insert(0, str(ROOT / "tests" / "support"))

import localcluster  # noqa: E402

STATE = ROOT / ".state" / "demo"
NAMESPACE = "phasegate-demo"
NAME = "demo"
BIN = Path(sys.executable).parent
G, V, P = "phasegate.dev", "v1alpha1", "tradingstrategies"


def say(msg: str) -> None:
    print(f"\n\033[1m==> {msg}\033[0m", flush=True)


def phasegate(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [str(BIN / "phasegate"), "-n", NAMESPACE, *args]
    print("$ phasegate " + " ".join(f'"{a}"' if " " in a else a for a in args), flush=True)
    res = subprocess.run(cmd, text=True, capture_output=True)
    out = (res.stdout + res.stderr).strip()
    if out:
        print(out, flush=True)
    if check and res.returncode != 0:
        raise SystemExit(f"phasegate {' '.join(args)} failed ({res.returncode})")
    return res


def start_operator(kubeconfig: Path) -> int:
    pid_file = STATE / "operator.pid"
    if pid_file.exists():
        pid = int(pid_file.read_text())
        try:
            os.kill(pid, 0)
            return pid
        except OSError:
            pass
    log = open(STATE / "operator.log", "ab")
    proc = subprocess.Popen(
        [str(BIN / "phasegate"), "run", "--metrics-port", "18080", "--liveness-port", "18081"],
        env={**os.environ, "KUBECONFIG": str(kubeconfig)},
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT,
    )
    pid_file.write_text(str(proc.pid))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen("http://127.0.0.1:18081/healthz", timeout=1)
            return proc.pid
        except OSError:
            if proc.poll() is not None:
                raise SystemExit(f"the operator exited; see {STATE / 'operator.log'}") from None
            time.sleep(0.3)
    raise SystemExit(f"the operator did not come up; see {STATE / 'operator.log'}")


def wait_for_rung_pod(core, custom, phase: str, timeout: float = 90) -> str:
    """The pod of `phase` running, ready and read by the operator: a phase change rolls the pod."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            pod = core.read_namespaced_pod(f"{NAME}-0", NAMESPACE)
        except Exception:
            pod = None
        st = custom.get_namespaced_custom_object(G, V, NAMESPACE, P, NAME).get("status") or {}
        read = any(c["type"] == "MetricsAvailable" and c["status"] == "True" for c in st.get("conditions", []))
        if (
            pod is not None
            and (pod.metadata.annotations or {}).get("phasegate.dev/phase") == phase
            and pod.metadata.deletion_timestamp is None
            and any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])
            and read
        ):
            return pod.status.pod_ip
        time.sleep(0.5)
    raise SystemExit(f"the {phase} pod did not become ready")


def up() -> int:
    STATE.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    say("1/6 local control plane (etcd, kube-apiserver, controller-manager, scheduler, kwok, a local-process node)")
    cluster = localcluster.LocalCluster()
    cluster.up()
    kubeconfig = cluster.kubeconfig
    os.environ["KUBECONFIG"] = str(kubeconfig)
    os.environ["PATH"] = f"{BIN}{os.pathsep}{cluster.bin_dir}{os.pathsep}{os.environ['PATH']}"

    from kubernetes import client, config

    api = config.new_client_from_config(config_file=str(kubeconfig))
    custom, core = client.CustomObjectsApi(api), client.CoreV1Api(api)
    say("2/6 the TradingStrategy CRD (phasegate install-crds)")
    subprocess.run([str(BIN / "phasegate"), "install-crds"], check=True)

    say("3/6 the operator (phasegate run), logs in .state/demo/operator.log")
    start_operator(kubeconfig)

    say(f"4/6 kubectl apply -f strategies/demo.yaml  (namespace {NAMESPACE})")
    try:
        core.create_namespace({"metadata": {"name": NAMESPACE}})
    except client.exceptions.ApiException as exc:
        if exc.status != 409:
            raise
    try:  # a demo run before this one: start the ladder from the bottom again
        custom.delete_namespaced_custom_object(G, V, NAMESPACE, P, NAME)
        print("(deleting the previous run's demo strategy)", flush=True)
        while True:
            custom.get_namespaced_custom_object(G, V, NAMESPACE, P, NAME)
            time.sleep(0.5)
    except client.exceptions.ApiException as exc:
        if exc.status != 404:
            raise
    subprocess.run(["kubectl", "-n", NAMESPACE, "apply", "-f", str(ROOT / "strategies" / "demo.yaml")], check=True)
    print(
        "The ladder: backtest (a Job; its Sharpe, drawdown, walk-forward and Monte Carlo results must pass),\n"
        "paper and shadow (no capital; fill rate, signal alignment, latency must pass), then live at 10%, 35%,\n"
        "65% and 100% of capital, each rung held 15 s here (a week in production). live-10 needs a human's\n"
        "approval. The view below refreshes as the operator moves it.",
        flush=True,
    )

    say("5/6 watching it climb (phasegate status demo --watch shows the same view)")
    from rich.console import Console

    from phasegate.cli.render import render_status

    console = Console(width=max(140, Console().width))
    promoted = False
    last_phase = None
    deadline = time.monotonic() + 420
    while time.monotonic() < deadline:
        obj = custom.get_namespaced_custom_object(G, V, NAMESPACE, P, NAME)
        st = obj.get("status") or {}
        if st.get("phase") != last_phase or st.get("state") in ("Completed", "Failed", "Halted"):
            last_phase = st.get("phase")
            console.print(render_status(obj, datetime.now(UTC)))
        if st.get("state") in ("Failed", "Halted", "EmergencyStopped"):
            raise SystemExit(f"the demo strategy stopped early: {st.get('state')}: {st.get('message')}")
        if st.get("message", "").startswith("AwaitingApproval") and not promoted:
            say("live-10 is a manual gate: a person approves it")
            phasegate("promote", NAME, "--reason", "demo: risk officer reviewed paper and shadow results")
            promoted = True
        if st.get("state") == "Completed":
            break
        time.sleep(1)
    else:
        raise SystemExit("the demo strategy did not reach live-100 within 7 minutes")
    climbed = time.monotonic() - started

    say("6/6 the market crashes; the operator's own drawdown check trips the breaker")
    pod_ip = wait_for_rung_pod(core, custom, "live-100")
    print("(letting the live-100 book trade for a few seconds first)", flush=True)
    time.sleep(5)
    req = urllib.request.Request(f"http://{pod_ip}:9100/demo/crash", data=b"{}", method="POST")
    urllib.request.urlopen(req, timeout=5).read()
    print("$ curl -X POST http://<demo pod>:9100/demo/crash   # prices fall 8% a bar, no volume to sell into", flush=True)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 60:
        st = custom.get_namespaced_custom_object(G, V, NAMESPACE, P, NAME).get("status") or {}
        if st.get("state") in ("Halted", "EmergencyStopped"):
            break
        time.sleep(0.5)
    obj = custom.get_namespaced_custom_object(G, V, NAMESPACE, P, NAME)
    console.print(render_status(obj, datetime.now(UTC)))
    st = obj.get("status") or {}
    tripped = {k: b for k, b in (st.get("breakers") or {}).items() if b.get("state") == "Tripped"}
    print("\nWhat happened:")
    for h in st.get("history", []):
        print(
            f"  #{h['seq']:<3} {h['at']}  {h['action']:<10} {h.get('from', ''):>9} -> {h.get('to', ''):<9}"
            f" {h['reason'][:90]}  (by {h['by']})"
        )
    for name, b in tripped.items():
        print(f"\nBreaker {name} tripped: {b.get('reason')}")
    print(
        f"\nThe strategy is {st.get('state')}: its pod was stopped (StatefulSet replicas 0) and nothing restarts it:\n"
        "not a timer, not an operator restart, not re-applying the manifest. Only a person, with a reason:\n\n"
        f"    phasegate -n {NAMESPACE} reset {NAME} --reason \"post-mortem done\"\n\n"
        f"Look around:  export KUBECONFIG={kubeconfig}\n"
        f"              kubectl -n {NAMESPACE} get tradingstrategies\n"
        f"              phasegate -n {NAMESPACE} status {NAME} --watch\n"
        "Stop it all:  make demo-down\n"
        f"\nThe ladder took {climbed:.0f} s from `make demo` to live-100; the halt {time.monotonic() - t0:.1f} s after the crash."
    )
    return 0 if st.get("state") in ("Halted", "EmergencyStopped") else 1


def down() -> int:
    pid_file = STATE / "operator.pid"
    if pid_file.exists():
        try:
            os.killpg(int(pid_file.read_text()), signal.SIGTERM)
        except (OSError, ValueError):
            pass
        pid_file.unlink(missing_ok=True)
    localcluster.LocalCluster().down()
    print("demo stopped: operator and local control plane are down")
    return 0


if __name__ == "__main__":
    cmd = sys.argv[1] if len(sys.argv) > 1 else "up"
    sys.exit(up() if cmd == "up" else down())
