#!/usr/bin/env python3
"""A real Kubernetes control plane as local processes, for tests and the demo.

    python hack/cluster/localcluster.py up       # start (or reuse); prints `export KUBECONFIG=...`
    python hack/cluster/localcluster.py status   # what runs, on which ports (exit 1 if not running)
    python hack/cluster/localcluster.py down     # stop every process it started, remove the state

It runs on loopback: etcd, kube-apiserver (RBAC, the default admission plugins, service
account signing), kube-controller-manager, kube-scheduler, kwok managing the fake nodes
kwok-node-0..N-1, and local_kubelet.py acting as the kubelet of the node `local-process`,
whose pods run as real local processes. Everything it writes (certificates, kubeconfigs,
etcd data, pids, logs, pod logs) lives in one state folder, by default <repo>/.state/cluster.

As a module (the test fixtures use it):

    from localcluster import LocalCluster
    c = LocalCluster()                 # or LocalCluster(tmp_dir, port_base="auto")
    c.up()                             # idempotent; returns self
    c.kubeconfig                       # Path of the admin kubeconfig
    c.pod_log("ns", "pod")             # stdout+stderr of a local-process pod
    c.down()

Only the Python standard library is used here (openssl makes the certificates).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
DEFAULT_STATE_DIR = REPO / ".state" / "cluster"
BUILD_SCRIPT = HERE / "build-binaries.sh"
KUBELET_SCRIPT = HERE / "local_kubelet.py"

DEFAULT_PORT_BASE = 16400
# offsets from the port base; 16443 is the API server with the default base
PORT_OFFSETS = {
    "etcd": 79,
    "etcd-peer": 80,
    "kube-apiserver": 43,
    "kube-controller-manager": 57,
    "kube-scheduler": 59,
    "kwok": 47,
}
SERVICE_CIDR = "10.0.0.0/24"
KWOK_NODE_ANNOTATION = ("kwok.x-k8s.io/node", "fake")
KWOK_NODE_PODS = 2000
# start order; `down` stops them in reverse
COMPONENTS = ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok", "local-kubelet"]


class ClusterError(RuntimeError):
    """A problem with a clear message naming what failed and what to do."""


def _log(msg: str) -> None:
    print(f"[cluster {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- processes


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is dead for our purposes
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _ppid_map() -> dict[int, int]:
    out = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    out[int(d)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    return out


def _descendants(pids: set[int]) -> set[int]:
    parents = _ppid_map()
    found, frontier = set(), set(pids)
    while frontier:
        children = {p for p, pp in parents.items() if pp in frontier and p not in found}
        found |= children
        frontier = children
    return found


def _cwd(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return ""


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def _own_lineage() -> set[int]:
    """This process and its ancestors: never to be signalled."""
    parents, pid, out = _ppid_map(), os.getpid(), set()
    while pid > 1 and pid not in out:
        out.add(pid)
        pid = parents.get(pid, 0)
    return out


def _terminate(pids: set[int], timeout: float) -> set[int]:
    """SIGTERM, wait up to timeout, SIGKILL what is left. Returns the pids that were killed hard."""
    pids = {p for p in pids if _alive(p)} - _own_lineage()
    for p in pids:
        with contextlib.suppress(OSError):
            os.kill(p, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.05)
    hard = {p for p in pids if _alive(p)}
    for p in hard:
        with contextlib.suppress(OSError):
            os.kill(p, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(_alive(p) for p in hard):
        time.sleep(0.05)
    return hard


def _port_owner(port: int) -> str:
    """Best effort: 'pid 123 (cmd)' of the process listening on a TCP port."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            for line in list(f)[1:]:
                cols = line.split()
                if int(cols[1].rsplit(":", 1)[1], 16) == port and cols[3] == "0A":  # LISTEN
                    inodes.add(cols[9])
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{d}/fd"):
                with contextlib.suppress(OSError):
                    link = os.readlink(f"/proc/{d}/fd/{fd}")
                    if link.startswith("socket:[") and link[8:-1] in inodes:
                        return f"pid {d} ({_cmdline(int(d))[:100]})"
    return "another process"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    try:
        while len(ports) < n:
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


# --------------------------------------------------------------------------- HTTP checks


def _open(req: urllib.request.Request, timeout: float, ctx: ssl.SSLContext | None):
    """urlopen that ignores http(s)_proxy: everything here is on loopback."""
    handlers = [urllib.request.ProxyHandler({})] + ([urllib.request.HTTPSHandler(context=ctx)] if ctx else [])
    return urllib.request.build_opener(*handlers).open(req, timeout=timeout)


def _http_get(url: str, *, token: str | None = None, ca: Path | None = None, timeout: float = 2.0) -> tuple[int, bytes]:
    if url.startswith("https"):
        ctx = ssl.create_default_context(cafile=str(ca)) if ca else ssl._create_unverified_context()
    else:
        ctx = None
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with _open(req, timeout, ctx) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@dataclass
class Component:
    name: str
    argv: list[str]
    ready: Callable[[], bool]  # True when serving
    what: str  # what readiness means, for the error message


# --------------------------------------------------------------------------- the cluster


class LocalCluster:
    """One local control plane, owned by its state folder."""

    def __init__(
        self,
        state_dir: str | os.PathLike | None = None,
        *,
        port_base: int | str | None = None,
        kwok_nodes: int = 2,
        kwok_pod_cidr: str | None = None,
        local_pod_cidr: str | None = None,
        start_timeout: float = 90.0,
    ):
        self.state_dir = Path(state_dir or os.environ.get("PHASEGATE_CLUSTER_STATE") or DEFAULT_STATE_DIR).resolve()
        if port_base is None:
            port_base = os.environ.get("PHASEGATE_CLUSTER_PORT_BASE", DEFAULT_PORT_BASE)
        self.port_base = port_base
        self.kwok_nodes = kwok_nodes
        # Two clusters on one host (parallel work trees) need pod addresses that do not collide.
        self.kwok_pod_cidr = kwok_pod_cidr or os.environ.get("PHASEGATE_KWOK_POD_CIDR", "127.100.0.0/16")
        self.local_pod_cidr = local_pod_cidr or os.environ.get("PHASEGATE_LOCAL_POD_CIDR", "127.77.0.0/16")
        self.start_timeout = start_timeout
        self._started: dict[str, subprocess.Popen] = {}
        self.reused = False  # after up(): True when it found the cluster already running

    # ---- paths
    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig"

    @property
    def _info_file(self) -> Path:
        return self.state_dir / "cluster.json"

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def pods_dir(self) -> Path:
        return self.state_dir / "pods"

    def log_file(self, component: str) -> Path:
        return self.logs_dir / f"{component}.log"

    def pod_dir(self, namespace: str, name: str) -> Path:
        """Working directory of a pod on the local-process node (its cwd)."""
        return self.pods_dir / namespace / name

    def pod_log(self, namespace: str, name: str, container: str | None = None) -> Path:
        """stdout+stderr of a local-process pod's container (appended across restarts)."""
        d = self.pod_dir(namespace, name)
        if container:
            return d / f"{container}.log"
        logs = sorted(d.glob("*.log"))
        return logs[0] if logs else d / "container.log"

    def info(self) -> dict:
        try:
            return json.loads(self._info_file.read_text())
        except (OSError, ValueError):
            return {}

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.info()['ports']['kube-apiserver']}"

    @property
    def bin_dir(self) -> Path | None:
        b = self.info().get("bin_dir")
        return Path(b) if b else None

    # ---- state
    def _recorded_pids(self) -> dict[str, int]:
        return {k: int(v) for k, v in self.info().get("pids", {}).items()}

    def _ours(self, pid: int) -> bool:
        """A recorded pid still belongs to this cluster (not reused by an unrelated process)."""
        return _alive(pid) and (_cwd(pid).startswith(str(self.state_dir)) or str(self.state_dir) in _cmdline(pid))

    def is_running(self) -> bool:
        """All recorded components alive and the API server ready."""
        info = self.info()
        if info.get("state") != "running":
            return False
        pids = self._recorded_pids()
        if set(pids) != set(COMPONENTS) or not all(self._ours(p) for p in pids.values()):
            return False
        try:
            code, _ = _http_get(f"{self.server}/readyz", token=info["admin_token"], ca=self.state_dir / "pki/ca.crt")
        except OSError:
            return False
        return code == 200

    def status(self) -> dict:
        info = self.info()
        comps = {}
        for name, pid in self._recorded_pids().items():
            comps[name] = {"pid": pid, "alive": self._ours(pid), "log": str(self.log_file(name))}
            port = info.get("ports", {}).get(name)
            if port:
                comps[name]["port"] = port
        return {
            "state_dir": str(self.state_dir),
            "running": self.is_running(),
            "kubeconfig": str(self.kubeconfig) if self.kubeconfig.exists() else None,
            "bin_dir": info.get("bin_dir"),
            "components": comps,
        }

    # ---- up
    def up(self) -> LocalCluster:
        """Start the control plane, or reuse the one running from this state folder."""
        with self._lock():
            if self.is_running():
                _log(f"reusing the running cluster in {self.state_dir}")
                self.reused = True
                self._restart_kubelet_if_changed()
                return self
            self.reused = False
            if self.state_dir.exists():
                _log(f"found stale state in {self.state_dir} (not all components running): cleaning it up")
                self._down_locked(quiet=True)
            t0 = time.monotonic()
            bin_dir = self._build_binaries()
            t_build = time.monotonic() - t0
            try:
                self._start(bin_dir)
            except BaseException:
                _log("start-up failed: stopping every process started so far")
                self._stop_processes(quiet=True)
                if self._info_file.exists():  # the logs stay for reading; the next up or down removes them
                    self._write_info({**self.info(), "state": "failed"})
                raise
            _log(f"cluster ready in {time.monotonic() - t0:.1f}s (binaries check {t_build:.1f}s); kubeconfig {self.kubeconfig}")
            return self

    def kubelet_changed(self) -> bool:
        """local_kubelet.py differs from the version the running local kubelet was started from."""
        return self.info().get("kubelet_sha256") != _sha256(KUBELET_SCRIPT)

    def _restart_kubelet_if_changed(self) -> None:
        """local_kubelet.py is scaffolding that still changes: `up` on a running cluster picks up a new version."""
        if not self.kubelet_changed():
            return
        info = self.info()
        _log("hack/cluster/local_kubelet.py changed since the local kubelet started: restarting it (and its pods)")
        self._stop_kubelet(info["pids"]["local-kubelet"])
        kubelet = self._components(Path(info["bin_dir"]), info["ports"], info["admin_token"])[-1]
        self._launch(kubelet, info)
        self._wait(kubelet)

    @contextlib.contextmanager
    def _lock(self):
        self.state_dir.parent.mkdir(parents=True, exist_ok=True)
        with open(self.state_dir.parent / f".{self.state_dir.name}.lock", "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _build_binaries(self) -> Path:
        _log(f"checking the binaries ({BUILD_SCRIPT.relative_to(REPO)}; the first build takes 10-20 minutes)")
        proc = subprocess.run(["bash", str(BUILD_SCRIPT)], stdout=subprocess.PIPE, text=True)  # progress on stderr
        lines = [line for line in proc.stdout.splitlines() if line.strip()]
        if proc.returncode != 0 or not lines:
            raise ClusterError(f"building the control plane binaries failed (exit {proc.returncode}); see the messages above")
        bin_dir = Path(lines[-1].strip())
        wanted = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
        missing = [b for b in wanted if not os.access(bin_dir / b, os.X_OK)]
        if missing:
            raise ClusterError(f"{bin_dir} lacks {', '.join(missing)}; remove that folder and run `make binaries` again")
        return bin_dir

    def _choose_ports(self) -> dict[str, int]:
        if str(self.port_base) == "auto" or str(self.port_base) == "0":
            return dict(zip(PORT_OFFSETS, _free_ports(len(PORT_OFFSETS)), strict=True))
        base = int(self.port_base)
        ports = {name: base + off for name, off in PORT_OFFSETS.items()}
        for name, port in ports.items():
            if not _port_free(port):
                raise ClusterError(
                    f"port {port} on 127.0.0.1 (for {name}) is already in use by {_port_owner(port)}. "
                    f"Fix: stop that process (if it is an old cluster of this project, `make cluster-down`), "
                    f"or choose other ports: PHASEGATE_CLUSTER_PORT_BASE=<n> (ports n+43..n+80) or =auto."
                )
        return ports

    def _write_info(self, info: dict) -> None:
        tmp = self._info_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(info, indent=2))
        tmp.replace(self._info_file)

    def _start(self, bin_dir: Path) -> None:
        t0 = time.monotonic()
        ports = self._choose_ports()
        for d in ("pki", "kubeconfigs", "logs", "pods", "etcd"):
            (self.state_dir / d).mkdir(parents=True, exist_ok=True)
        (self.state_dir / "etcd").chmod(0o700)
        with contextlib.suppress(FileExistsError):
            (self.state_dir / "bin").symlink_to(bin_dir)
        tokens = {u: secrets.token_hex(16) for u in ("admin", "kcm", "scheduler", "kwok", "kubelet")}
        info = {
            "state": "starting",
            "bin_dir": str(bin_dir),
            "ports": ports,
            "pids": {},
            "admin_token": tokens["admin"],
            "kwok_nodes": [f"kwok-node-{i}" for i in range(self.kwok_nodes)],
            "local_pod_cidr": self.local_pod_cidr,
            "kwok_pod_cidr": self.kwok_pod_cidr,
        }
        self._write_info(info)
        self._make_pki(tokens)
        server = f"https://127.0.0.1:{ports['kube-apiserver']}"
        for u in tokens:
            self._write_kubeconfig(u, server, tokens[u])
        shutil.copy(self._kc("admin"), self.kubeconfig)
        self._write_kwok_config(bin_dir)
        _log(f"certificates and kubeconfigs written ({time.monotonic() - t0:.1f}s)")

        comps = self._components(bin_dir, ports, tokens["admin"])
        by_name = {c.name: c for c in comps}
        # etcd; the API server and the local kubelet (slow to import, it retries); then the rest at once
        self._launch(by_name["etcd"], info)
        self._wait(by_name["etcd"])
        self._launch(by_name["kube-apiserver"], info)
        self._launch(by_name["local-kubelet"], info)
        self._wait(by_name["kube-apiserver"])
        for name in COMPONENTS[2:-1]:
            self._launch(by_name[name], info)
        self._create_kwok_nodes()
        for name in COMPONENTS[2:]:
            self._wait(by_name[name])
        self._wait(
            Component("nodes", [], self._nodes_ready, "all nodes Ready and untainted, the default ServiceAccount created"),
            log_name="kube-controller-manager",
        )
        info["state"] = "running"
        self._write_info(info)

    # ---- certificates and kubeconfigs
    def _openssl(self, *args: str) -> None:
        p = subprocess.run(["openssl", *args], cwd=self.state_dir / "pki", capture_output=True, text=True)
        if p.returncode != 0:
            raise ClusterError(f"openssl {' '.join(args[:2])} failed: {p.stderr.strip()}")

    def _make_pki(self, tokens: dict[str, str]) -> None:
        if shutil.which("openssl") is None:
            raise ClusterError(
                "openssl is not installed; it makes the cluster's certificates. Install it (apt-get install openssl)."
            )
        pki = self.state_dir / "pki"
        (pki / "ca.cnf").write_text(
            "[req]\ndistinguished_name=dn\nprompt=no\n[dn]\nCN=phasegate-local-ca\n"
            "[v3_ca]\nbasicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign,digitalSignature\n"
            "subjectKeyIdentifier=hash\n"
        )
        (pki / "server.cnf").write_text("[req]\ndistinguished_name=dn\nprompt=no\n[dn]\nCN=kube-apiserver\n")
        sans = (
            "DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,"
            "DNS:kubernetes.default.svc.cluster.local,IP:127.0.0.1,IP:10.0.0.1"
        )
        (pki / "server.ext").write_text(
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
            f"subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\nsubjectAltName={sans}\n"
        )
        for key in ("ca.key", "apiserver.key", "sa.key"):
            self._openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", key)
        self._openssl("ec", "-in", "sa.key", "-pubout", "-out", "sa.pub")
        self._openssl(
            "req", "-x509", "-new", "-key", "ca.key", "-config", "ca.cnf", "-extensions", "v3_ca",
            "-days", "3650", "-sha256", "-out", "ca.crt",
        )
        self._openssl("req", "-new", "-key", "apiserver.key", "-config", "server.cnf", "-out", "apiserver.csr")
        self._openssl("x509", "-req", "-in", "apiserver.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                      "-days", "3650", "-sha256", "-extfile", "server.ext", "-out", "apiserver.crt")
        users = {
            "admin": ("phasegate-admin", "system:masters"),
            # controllers act as the controller-manager itself, not one ServiceAccount each: its start
            # takes 0.5s instead of 5s. RBAC still applies to every other client.
            "kcm": ("system:kube-controller-manager", "system:masters"),
            "scheduler": ("system:kube-scheduler", ""),
            "kwok": ("kwok", "system:masters"),
            "kubelet": ("phasegate:local-kubelet", "system:masters"),  # reads Secrets for env, as a kubelet does
        }
        lines = [
            f'{tokens[u]},{name},{name},"{groups}"' if groups else f"{tokens[u]},{name},{name}"
            for u, (name, groups) in users.items()
        ]
        (pki / "tokens.csv").write_text("\n".join(lines) + "\n")
        for f in pki.iterdir():
            f.chmod(0o600)

    def _kc(self, user: str) -> Path:
        return self.state_dir / "kubeconfigs" / f"{user}.kubeconfig"

    def _write_kubeconfig(self, user: str, server: str, token: str) -> Path:
        ca = base64.b64encode((self.state_dir / "pki/ca.crt").read_bytes()).decode()
        path = self._kc(user)
        cfg = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "phasegate-local", "cluster": {"server": server, "certificate-authority-data": ca}}],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [
                {"name": "phasegate-local", "context": {"cluster": "phasegate-local", "user": user, "namespace": "default"}}
            ],
            "current-context": "phasegate-local",
        }
        path.write_text(json.dumps(cfg, indent=2))  # JSON is valid kubeconfig YAML
        path.chmod(0o600)
        return path

    def _write_kwok_config(self, bin_dir: Path) -> None:
        stages = sorted((bin_dir / "kwok-stages").glob("*.yaml"))
        if not stages:
            raise ClusterError(
                f"no kwok stage files in {bin_dir / 'kwok-stages'}; remove that folder and run `make binaries` again"
            )
        docs = [s.read_text().strip() for s in stages]
        (self.state_dir / "kwok.yaml").write_text("\n---\n".join(docs) + "\n")

    # ---- components
    def _components(self, b: Path, ports: dict[str, int], admin_token: str) -> list[Component]:
        """The command lines, in COMPONENTS order."""
        pki = self.state_dir / "pki"
        kc = {u: self._kc(u) for u in ("kcm", "scheduler", "kwok", "kubelet")}
        p = ports
        api = f"https://127.0.0.1:{p['kube-apiserver']}"

        def healthz(url: str, token: str | None = None, ca: Path | None = None) -> Callable[[], bool]:
            def check() -> bool:
                try:
                    return _http_get(url, token=token, ca=ca, timeout=1)[0] == 200
                except OSError:
                    return False
            return check

        issuer = "https://kubernetes.default.svc.cluster.local"
        return [
            Component("etcd", [
                str(b / "etcd"), "--name=phasegate", f"--data-dir={self.state_dir / 'etcd'}",
                f"--listen-client-urls=http://127.0.0.1:{p['etcd']}", f"--advertise-client-urls=http://127.0.0.1:{p['etcd']}",
                f"--listen-peer-urls=http://127.0.0.1:{p['etcd-peer']}", f"--initial-advertise-peer-urls=http://127.0.0.1:{p['etcd-peer']}",
                f"--initial-cluster=phasegate=http://127.0.0.1:{p['etcd-peer']}",
                "--unsafe-no-fsync", "--log-level=warn", "--quota-backend-bytes=4294967296",
            ], healthz(f"http://127.0.0.1:{p['etcd']}/health"), f"http://127.0.0.1:{p['etcd']}/health answers 200"),
            Component("kube-apiserver", [
                str(b / "kube-apiserver"),
                f"--etcd-servers=http://127.0.0.1:{p['etcd']}",
                "--bind-address=127.0.0.1", f"--secure-port={p['kube-apiserver']}", "--advertise-address=127.0.0.1",
                f"--cert-dir={pki}", f"--tls-cert-file={pki / 'apiserver.crt'}",
                f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--client-ca-file={pki / 'ca.crt'}", f"--token-auth-file={pki / 'tokens.csv'}",
                "--authorization-mode=Node,RBAC",
                # the default admission plugins stay on (NamespaceLifecycle, ServiceAccount, ResourceQuota,
                # MutatingAdmissionWebhook, ValidatingAdmissionWebhook, ValidatingAdmissionPolicy, ...)
                f"--service-account-issuer={issuer}", f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                # no endpoints for the `kubernetes` Service: 127.0.0.1 is not a valid endpoint address
                "--endpoint-reconciler-type=none",
                "--allow-privileged=true", "--profiling=false", "--v=1",
            ], healthz(f"{api}/readyz", admin_token, pki / "ca.crt"), f"{api}/readyz answers 200"),
            Component("kube-controller-manager", [
                str(b / "kube-controller-manager"), f"--kubeconfig={kc['kcm']}",
                "--bind-address=127.0.0.1", f"--secure-port={p['kube-controller-manager']}", "--leader-elect=false",
                f"--service-account-private-key-file={pki / 'sa.key'}", f"--root-ca-file={pki / 'ca.crt'}",
                "--use-service-account-credentials=false",  # see the token file
                f"--cluster-signing-cert-file={pki / 'ca.crt'}", f"--cluster-signing-key-file={pki / 'ca.key'}",
                # a node is NotReady 40s after its last heartbeat; the local kubelet renews its Lease every 5s
                "--node-monitor-period=5s", "--node-monitor-grace-period=40s",
                # Pod addresses are loopback, which neither Endpoints nor EndpointSlices accept:
                # these controllers would retry every Service forever, each time a failed write
                # and a Warning Event (about one of each per Service every 10 s: as many requests
                # as the operator's own, in `make bench-scale`). Nothing here routes by Service.
                "--controllers=*,-endpoints-controller,-endpointslice-controller,-endpointslice-mirroring-controller",
                "--profiling=false", "--v=1",
            ], healthz(f"https://127.0.0.1:{p['kube-controller-manager']}/healthz"),
                f"https://127.0.0.1:{p['kube-controller-manager']}/healthz answers 200"),
            Component("kube-scheduler", [
                str(b / "kube-scheduler"), f"--kubeconfig={kc['scheduler']}",
                "--bind-address=127.0.0.1", f"--secure-port={p['kube-scheduler']}", "--leader-elect=false",
                "--profiling=false", "--v=1",
            ], healthz(f"https://127.0.0.1:{p['kube-scheduler']}/healthz"),
                f"https://127.0.0.1:{p['kube-scheduler']}/healthz answers 200"),
            Component("kwok", [
                str(b / "kwok"), f"--kubeconfig={kc['kwok']}", f"--config={self.state_dir / 'kwok.yaml'}",
                f"--manage-nodes-with-annotation-selector={'='.join(KWOK_NODE_ANNOTATION)}",
                f"--cidr={self.kwok_pod_cidr}", "--node-ip=127.0.0.1", "--node-lease-duration-seconds=40",
                f"--server-address=127.0.0.1:{p['kwok']}",
            ], healthz(f"http://127.0.0.1:{p['kwok']}/healthz"), f"http://127.0.0.1:{p['kwok']}/healthz answers 200"),
            Component("local-kubelet", [
                sys.executable, str(KUBELET_SCRIPT), f"--kubeconfig={kc['kubelet']}",
                f"--state-dir={self.state_dir}", f"--pod-cidr={self.local_pod_cidr}",
            ], self._kubelet_ready, "node local-process Ready, its Lease renewed by this kubelet"),
        ]

    def _launch(self, c: Component, info: dict) -> None:
        log = open(self.log_file(c.name), "ab")
        env = dict(os.environ)
        env.pop("KUBECONFIG", None)
        if c.name == "local-kubelet":  # pods find this Python (the virtualenv's) first on their PATH
            env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", os.defpath)])
            info["kubelet_started_at"] = time.time()
            info["kubelet_sha256"] = _sha256(KUBELET_SCRIPT)
        proc = subprocess.Popen(c.argv, cwd=self.state_dir, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, env=env)
        log.close()
        self._started[c.name] = proc
        info["pids"][c.name] = proc.pid
        self._write_info(info)

    def _wait(self, c: Component, log_name: str | None = None) -> None:
        t0 = time.monotonic()
        deadline = t0 + self.start_timeout
        proc = self._started.get(c.name)
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise ClusterError(
                    f"{c.name} exited with code {proc.returncode} during start-up. Its log: {self.log_file(c.name)}\n"
                    + self._tail(self.log_file(c.name))
                )
            if c.ready():
                _log(f"{c.name} ready ({time.monotonic() - t0:.1f}s)")
                return
            time.sleep(0.1)
        log = self.log_file(log_name or c.name)
        raise ClusterError(
            f"{c.name} did not become ready within {self.start_timeout:.0f}s (waiting for: {c.what}). "
            f"Its log: {log}\n" + self._tail(log)
        )

    @staticmethod
    def _tail(path: Path, n: int = 15) -> str:
        try:
            lines = path.read_text(errors="replace").splitlines()[-n:]
        except OSError:
            return ""
        return "".join(f"    | {line}\n" for line in lines)

    # ---- tiny API client (stdlib only)
    def _api(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        info = self.info()
        ctx = ssl.create_default_context(cafile=str(self.state_dir / "pki/ca.crt"))
        req = urllib.request.Request(
            f"https://127.0.0.1:{info['ports']['kube-apiserver']}{path}", method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Authorization": f"Bearer {info['admin_token']}", "Content-Type": "application/json"},
        )
        try:
            with _open(req, 5, ctx) as r:
                return r.status, json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as e:
            return e.code, {}

    def _create_kwok_nodes(self) -> None:
        for name in self.info()["kwok_nodes"]:
            node = {
                "apiVersion": "v1", "kind": "Node",
                "metadata": {
                    "name": name,
                    "annotations": {KWOK_NODE_ANNOTATION[0]: KWOK_NODE_ANNOTATION[1], "node.alpha.kubernetes.io/ttl": "0"},
                    "labels": {"type": "kwok", "kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                               "kubernetes.io/arch": "amd64", "node-role.kubernetes.io/agent": ""},
                },
                # Room for `make bench-scale` (1000 strategy pods and its floor) on the two
                # fake nodes: a kwok pod costs nothing, and at 250 each the rest stayed Pending.
                "status": {"allocatable": {"cpu": "32", "memory": "128Gi", "pods": str(KWOK_NODE_PODS)},
                           "capacity": {"cpu": "32", "memory": "128Gi", "pods": str(KWOK_NODE_PODS)}},
            }
            code, _ = self._api("POST", "/api/v1/nodes", node)
            if code not in (201, 409):
                raise ClusterError(
                    f"creating the kwok node {name} failed with HTTP {code}; see {self.log_file('kube-apiserver')}"
                )

    @staticmethod
    def _is_ready(node: dict) -> bool:
        conds = node.get("status", {}).get("conditions", [])
        taints = {t.get("key") for t in node.get("spec", {}).get("taints", []) or []}
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conds) and not (
            taints & {"node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"}
        )

    def _node_ready(self, name: str) -> bool:
        try:
            code, node = self._api("GET", f"/api/v1/nodes/{name}")
        except OSError:
            return False
        return code == 200 and self._is_ready(node)

    def _kubelet_ready(self) -> bool:
        if not self._node_ready("local-process"):
            return False
        try:
            code, lease = self._api("GET", "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/local-process")
        except OSError:
            return False
        renewed = lease.get("spec", {}).get("renewTime", "") if code == 200 else ""
        try:
            at = datetime.strptime(renewed, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()
        except ValueError:
            return False
        return at >= self.info().get("kubelet_started_at", 0)

    def _nodes_ready(self) -> bool:
        try:
            code, nodes = self._api("GET", "/api/v1/nodes")
            if code != 200:
                return False
            ready = {n["metadata"]["name"] for n in nodes.get("items", []) if self._is_ready(n)}
            want = set(self.info()["kwok_nodes"]) | {"local-process"}
            return want <= ready and self._api("GET", "/api/v1/namespaces/default/serviceaccounts/default")[0] == 200
        except OSError:
            return False

    # ---- down
    def down(self) -> None:
        """Stop every process of this cluster (by pid, children included) and remove the state folder."""
        with self._lock():
            self._down_locked()

    def _down_locked(self, quiet: bool = False) -> None:
        if not self.state_dir.exists():
            if not quiet:
                _log(f"no cluster state in {self.state_dir}: nothing to stop")
            return
        left = self._stop_processes(quiet=quiet)
        if left:
            raise ClusterError(f"processes still running after SIGKILL: {sorted(left)}; state kept in {self.state_dir}")
        shutil.rmtree(self.state_dir, ignore_errors=True)
        if not quiet:
            _log(f"removed {self.state_dir}")

    def _pod_pids(self) -> set[int]:
        """Pod processes of the local kubelet: recorded pid files, and anything whose cwd is a pod folder."""
        pids = set()
        for f in self.pods_dir.glob("*/*/pid"):
            with contextlib.suppress(OSError, ValueError):
                pids.add(int(f.read_text()))
        prefix = str(self.pods_dir) + os.sep
        for d in os.listdir("/proc"):
            if d.isdigit() and _cwd(int(d)).startswith(prefix):
                pids.add(int(d))
        return {p for p in pids if _alive(p)}

    def _stop_kubelet(self, pid: int) -> None:
        """The kubelet stops its pods on SIGTERM (SIGKILL after 5s); what is left is killed here."""
        tree = {pid} | _descendants({pid})
        _terminate({pid}, timeout=8)
        _terminate(tree | self._pod_pids(), timeout=2)

    def _stop_processes(self, quiet: bool = False) -> set[int]:
        recorded = self._recorded_pids()
        recorded.update({n: p.pid for n, p in self._started.items()})
        ours = {n: p for n, p in recorded.items() if self._ours(p)}
        t0 = time.monotonic()
        order = [n for n in reversed(COMPONENTS) if n in ours]
        if "local-kubelet" in ours:  # first, so that it stops its pods
            self._stop_kubelet(ours.pop("local-kubelet"))
        tree = set(ours.values()) | _descendants(set(ours.values()))
        # everything but etcd at once, then etcd (the API server shuts down cleaner with etcd up)
        etcd = ours.get("etcd")
        _terminate(tree - {etcd} if etcd else tree, timeout=10)
        if etcd:
            _terminate({etcd}, timeout=10)
        left = {p for p in (tree | self._pod_pids()) if _alive(p)} - _own_lineage()
        if left:
            _terminate(left, timeout=2)
        for p in self._started.values():
            with contextlib.suppress(Exception):
                p.wait(timeout=1)
        self._started.clear()
        left = {p for p in left if _alive(p)}
        if not quiet:
            _log(f"stopped {', '.join(order) or 'nothing'} ({time.monotonic() - t0:.1f}s)")
        return left


# --------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="localcluster", description=__doc__.split("\n\n")[0])
    ap.add_argument("command", choices=["up", "down", "status"])
    ap.add_argument("--state-dir", default=None, help=f"default: $PHASEGATE_CLUSTER_STATE or {DEFAULT_STATE_DIR}")
    ap.add_argument("--port-base", default=None,
                    help=f"ports are base+43 (API server) .. base+80; 'auto' picks free ones "
                         f"(default: $PHASEGATE_CLUSTER_PORT_BASE or {DEFAULT_PORT_BASE})")
    args = ap.parse_args(argv)
    c = LocalCluster(args.state_dir, port_base=args.port_base)
    try:
        if args.command == "up":
            c.up()
            print(f"# the local control plane is up; bin: {c.bin_dir} (kubectl is there)")
            print(f"export KUBECONFIG={c.kubeconfig}")
        elif args.command == "down":
            c.down()
        else:
            st = c.status()
            print(json.dumps(st, indent=2))
            return 0 if st["running"] else 1
    except ClusterError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
