#!/usr/bin/env python3
"""local_kubelet: the kubelet of one node, `local-process`, whose pods run as local processes.

Test and demo scaffolding (docs/architecture.md), not product: nothing in
operator/phasegate imports it. localcluster.py starts it; it needs only a kubeconfig.

What it does, per pod bound to the node (spec.nodeName=local-process):

- runs the FIRST container's command + args (or args alone when there is no command: the
  image's entrypoint is unknown here) as a local process, its executable looked up on this
  kubelet's PATH; $(VAR) references are expanded as Kubernetes does;
- environment: the container's env and envFrom (value, fieldRef, resourceFieldRef,
  secretKeyRef, configMapKeyRef), plus PATH/HOME/LANG from this process, HOSTNAME,
  PYTHONUNBUFFERED=1, PHASEGATE_POD_IP (the pod's address, from 127.77.0.0/16 by default,
  unique among live pods) and PHASEGATE_TERMINATION_MESSAGE_PATH (a per-pod file: the
  container's terminationMessagePath cannot be written on this host);
- a value of the pod's env that starts with a volumeMount's mountPath is rewritten to a local
  folder (emptyDir and others: per pod; persistentVolumeClaim: per claim, so it survives the
  pod); a volume mounted at /tmp also sets TMPDIR to its folder (unless the pod sets TMPDIR);
- service account credentials, the way a kubelet projects them: the ServiceAccount admission
  plugin gives a pod whose token is automounted (automountServiceAccountToken, of the pod or
  its serviceAccountName) a `projected` volume (kube-api-access-*); this kubelet fills it: a
  token from the TokenRequest API for that ServiceAccount, bound to the pod (name and uid:
  the apiserver rejects it once the pod is gone), with the volume's audience and
  expirationSeconds, renewed in place at 80% of its lifetime; ca.crt from the ConfigMap
  kube-root-ca.crt; namespace from the downward API. The process cannot see
  /var/run/secrets/kubernetes.io/serviceaccount, so it also gets a per-pod kubeconfig in
  KUBECONFIG (unless the pod sets KUBECONFIG): this API server, that ca.crt, `tokenFile`
  the projected token, the pod's namespace. A client library then talks to the API as
  system:serviceaccount:<namespace>:<name>, under that account's RBAC, never as this
  kubelet (admin). A pod without the volume gets no KUBECONFIG at all;
- securityContext (runAsUser, readOnlyRootFilesystem, capabilities, seccomp) is accepted and
  not enforced: the process runs as this kubelet's user. The apiserver's PodSecurity
  admission is what checks those fields (tests/e2e/test_pod_security_e2e.py);
- working directory, logs and termination message in <state>/pods/<namespace>/<pod>/:
  `<container>.log` (stdout+stderr, appended across restarts), `termination-log`, `pid`;
- status: Running with podIP, Ready (readinessProbe httpGet/tcpSocket/exec honoured, else
  ready once started), containerStatuses with restartCount, lastState, exit codes;
- process exit: restartPolicy Always (or OnFailure after a failure) restarts it with a
  doubling back-off (1s..30s); otherwise the pod becomes Succeeded or Failed with
  terminated {exitCode, reason, message};
- deletion: SIGTERM to the process, up to the grace period (at least 2s, as the kubelet),
  then SIGKILL to its process group; reports the exit, then removes the pod (grace 0).

Not done: init containers, sidecars (only the first container runs), liveness and startup
probes, lifecycle hooks, resource limits, `kubectl logs/exec` (read the log file instead).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import importlib.util
import ipaddress
import json
import logging
import os
import platform
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import urllib3
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

REPO = Path(__file__).resolve().parents[2]


def _load_contract():
    """operator/phasegate/api/contract.py by path: shared names, without importing the package."""
    spec = importlib.util.spec_from_file_location("_phasegate_contract", REPO / "operator/phasegate/api/contract.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


contract = _load_contract()
NODE_NAME = contract.LOCAL_PROCESS_NODE
TAINT = {"key": contract.LOCAL_PROCESS_TAINT_KEY, "value": "true", "effect": "NoSchedule"}
NODE_LABELS = {
    contract.LOCAL_PROCESS_TAINT_KEY: "true",
    "kubernetes.io/hostname": NODE_NAME,
    "kubernetes.io/os": "linux",
    "kubernetes.io/arch": "amd64",
    "type": "local-process",
}
CAPACITY = {"cpu": "16", "memory": "64Gi", "pods": "110", "ephemeral-storage": "100Gi"}
HOST_IP = "127.0.0.1"
LEASE_SECONDS = 40
LEASE_RENEW_EVERY = 5.0
NODE_STATUS_EVERY = 30.0
BACKOFF_FIRST, BACKOFF_MAX = 1.0, 30.0
MIN_GRACE = 2  # the kubelet's minimum grace period
PASSTHROUGH_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "VIRTUAL_ENV")

log = logging.getLogger("local-kubelet")
_no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def micro_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class ConfigError(Exception):
    """The container cannot be configured yet (missing Secret/ConfigMap key): retried."""


_VAR = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes $(VAR) expansion: known names are replaced, unknown kept, $$ is a literal $."""
    return _VAR.sub(lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), value)


def exit_code(returncode: int) -> tuple[int, int | None]:
    """Popen returncode -> (container exit code, signal): a signal N reads as 128+N."""
    return (128 - returncode, -returncode) if returncode < 0 else (returncode, None)


class IPAllocator:
    """Pod addresses from a CIDR inside 127.0.0.0/8, unique among live pods, handed out round-robin."""

    def __init__(self, cidr: str):
        self.net = ipaddress.ip_network(cidr)
        assert self.net.subnet_of(ipaddress.ip_network("127.0.0.0/8")), "pod CIDR must be inside 127.0.0.0/8"
        self.next = 2
        self.used: dict[str, str] = {}
        self.lock = threading.Lock()

    def allocate(self, uid: str, preferred: str | None = None) -> str:
        with self.lock:
            if uid in self.used:
                return self.used[uid]
            taken = set(self.used.values())
            if preferred and ipaddress.ip_address(preferred) in self.net and preferred not in taken:
                self.used[uid] = preferred
                return preferred
            for _ in range(self.net.num_addresses):
                ip = str(self.net[self.next])
                self.next = self.next + 1 if self.next + 2 < self.net.num_addresses else 2
                if ip not in taken:
                    self.used[uid] = ip
                    return ip
            raise RuntimeError(f"no free pod address left in {self.net}")

    def release(self, uid: str) -> None:
        with self.lock:
            self.used.pop(uid, None)


class PodRunner(threading.Thread):
    """Runs one pod: its process, its status, its deletion."""

    def __init__(self, kubelet: Kubelet, pod: dict):
        meta, spec = pod["metadata"], pod["spec"]
        self.ns, self.pod_name, self.uid = meta["namespace"], meta["name"], meta["uid"]
        super().__init__(daemon=True, name=f"{self.ns}/{self.pod_name}")
        self.k = kubelet
        self.pod = pod
        self.c = spec["containers"][0]
        self.restart_policy = spec.get("restartPolicy", "Always")
        self.dir = kubelet.pods_dir / self.ns / self.pod_name
        self.log_path = self.dir / f"{self.c['name']}.log"
        self.term_path = self.dir / "termination-log"
        self.wake = threading.Event()
        self.vanished = False  # removed from the API (force delete)
        self.proc: subprocess.Popen | None = None
        self.ip = ""
        self.env: dict[str, str] = {}
        self.pod_started = now()
        self.container_started = ""
        self.ever_started = False
        self.restarts = int(next(iter(pod.get("status", {}).get("containerStatuses") or []), {}).get("restartCount", 0))
        self.last_terminated: dict | None = None
        self.crashes = 0
        self.started_mono = 0.0
        self.state: dict = {"waiting": {"reason": "ContainerCreating"}}
        self.ready = False
        self.restart_at: float | None = None
        self.probe_next = 0.0
        self.probe_ok = self.probe_fail = 0
        self.transitions: dict[str, tuple[str, str]] = {}
        self.token_renew_at: float | None = None  # monotonic time the projected token is renewed

    # ---- events from the watch
    def update(self, pod: dict) -> None:
        self.pod = pod
        self.wake.set()

    def vanish(self) -> None:
        self.vanished = True
        self.wake.set()

    def deleting(self) -> bool:
        return bool(self.pod["metadata"].get("deletionTimestamp"))

    def grace(self) -> int:
        g = self.pod["metadata"].get("deletionGracePeriodSeconds")
        if g is None:
            g = self.pod["spec"].get("terminationGracePeriodSeconds", 30)
        return max(int(g), MIN_GRACE)

    # ---- main loop
    def run(self) -> None:
        try:
            self.ip = self.k.ips.allocate(self.uid, self.pod.get("status", {}).get("podIP"))
            self._prepare_dir()
            if not self.deleting():
                self.start_container()
            while True:
                self.wake.wait(0.1)
                self.wake.clear()
                if self.vanished or self.deleting() or self.k.stopping.is_set():
                    self.stop_container(self.grace() if not self.k.stopping.is_set() else 5)
                    if not self.vanished and not self.k.stopping.is_set():
                        self.report(final=True)
                        self.k.delete_now(self.ns, self.pod_name, self.uid)
                    return
                if self.proc is not None and self.proc.poll() is not None:
                    if self.container_exited():
                        return  # Succeeded or Failed: nothing more to run
                if self.proc is None and self.restart_at is not None and time.monotonic() >= self.restart_at:
                    self.start_container()
                if self.proc is not None:
                    self.check_readiness()
                if self.token_renew_at is not None and time.monotonic() >= self.token_renew_at:
                    self.renew_tokens()
        except Exception:
            log.exception("pod %s/%s: runner failed", self.ns, self.pod_name)
            self.stop_container(2)
        finally:
            self.k.forget(self)

    def _prepare_dir(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        uid_file = self.dir / "uid"
        if not uid_file.exists() or uid_file.read_text() != self.uid:  # a new pod of that name
            shutil.rmtree(self.dir / "volumes", ignore_errors=True)
            uid_file.write_text(self.uid)

    # ---- the process
    def start_container(self) -> None:
        self.restart_at = None
        try:
            self.env = self.build_env()
            argv = [expand(a, self.env) for a in (self.c.get("command") or []) + (self.c.get("args") or [])]
        except ConfigError as e:
            self.state = {"waiting": {"reason": "CreateContainerConfigError", "message": str(e)}}
            self.restart_at = time.monotonic() + 2
            self.report()
            return
        self.term_path.write_text("")
        self.container_started, self.started_mono = now(), time.monotonic()
        try:
            if not argv:
                raise OSError("the local-process runtime needs container.command or args (the image is not run)")
            exe = argv[0] if "/" in argv[0] else shutil.which(argv[0], path=os.environ.get("PATH")) or argv[0]
            workdir = self.c.get("workingDir")
            cwd = workdir if workdir and os.path.isdir(workdir) else self.dir
            with open(self.log_path, "ab") as out:
                self.proc = subprocess.Popen([exe, *argv[1:]], env=self.env, cwd=cwd, stdout=out,
                                             stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        except OSError as e:
            log.warning("pod %s/%s: cannot start %r: %s", self.ns, self.pod_name, argv[:1], e)
            self.term_path.write_text(f"StartError: {e}")
            self.proc = None
            self._exited(128, None, "StartError")
            return
        (self.dir / "pid").write_text(str(self.proc.pid))
        self.ever_started = True
        self.state = {"running": {"startedAt": self.container_started}}
        has_probe = bool(self.c.get("readinessProbe"))
        self.ready = not has_probe
        self.probe_ok = self.probe_fail = 0
        self.probe_next = time.monotonic() + (self.c.get("readinessProbe") or {}).get("initialDelaySeconds", 0)
        log.info("pod %s/%s: started pid %d on %s: %s", self.ns, self.pod_name, self.proc.pid, self.ip, " ".join(argv))
        self.report()

    def stop_container(self, grace: float) -> None:
        """SIGTERM the process; SIGKILL its whole process group after the grace period."""
        if self.proc is None:
            return
        pid = self.proc.pid
        log.info("pod %s/%s: SIGTERM to pid %d, grace %ss", self.ns, self.pod_name, pid, grace)
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            log.info("pod %s/%s: grace period over, SIGKILL", self.ns, self.pod_name)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)  # the container's other processes go with it
        self.proc.wait()
        code, sig = exit_code(self.proc.returncode)
        self.proc = None
        self._record_exit(code, sig, "Completed" if code == 0 else "Error")

    def _record_exit(self, code: int, sig: int | None, reason: str) -> dict:
        with contextlib.suppress(OSError):
            (self.dir / "pid").unlink()
        term = {"exitCode": code, "reason": reason, "startedAt": self.container_started or now(), "finishedAt": now()}
        if sig:
            term["signal"] = sig
        message = self.termination_message(code)
        if message:
            term["message"] = message
        self.state = {"terminated": term}
        self.ready = False
        log.info("pod %s/%s: container exited with %d%s", self.ns, self.pod_name, code, f" (signal {sig})" if sig else "")
        return term

    def termination_message(self, code: int) -> str:
        try:
            msg = self.term_path.read_text(errors="replace")[:4096]
        except OSError:
            msg = ""
        if not msg.strip() and code != 0 and self.c.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            with contextlib.suppress(OSError):
                msg = "\n".join(self.log_path.read_text(errors="replace").splitlines()[-80:])[-2048:]
        return msg

    def container_exited(self) -> bool:
        code, sig = exit_code(self.proc.returncode)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # what the main process left behind
        self.proc = None
        return self._exited(code, sig, "Completed" if code == 0 else "Error")

    def _exited(self, code: int, sig: int | None, reason: str) -> bool:
        """Returns True when the pod is finished (no restart)."""
        term = self._record_exit(code, sig, reason)
        if self.restart_policy == "Always" or (self.restart_policy == "OnFailure" and code != 0):
            self.restarts += 1
            self.last_terminated = term
            # the back-off doubles with each quick crash; a run of a minute or more resets it
            self.crashes = 1 if time.monotonic() - self.started_mono >= 60 else self.crashes + 1
            backoff = min(BACKOFF_FIRST * 2 ** (self.crashes - 1), BACKOFF_MAX)
            self.state = {"waiting": {"reason": "CrashLoopBackOff", "message": (
                f"back-off {backoff:.0f}s restarting failed container={self.c['name']} pod={self.pod_name}_{self.ns}")}}
            self.restart_at = time.monotonic() + backoff
            self.report()
            return False
        self.report(final=True)
        return True

    # ---- environment
    def build_env(self) -> dict[str, str]:
        env = {k: os.environ[k] for k in PASSTHROUGH_ENV if k in os.environ}
        env.update({
            "HOSTNAME": self.pod_name,
            "PYTHONUNBUFFERED": "1",
            contract.ENV_POD_IP: self.ip,
            contract.ENV_TERMINATION_MESSAGE_PATH: str(self.term_path),
        })
        declared: set[str] = set()  # the pod's own variables (not this kubelet's PATH, HOME, ...)
        for src in self.c.get("envFrom") or []:
            prefix = src.get("prefix", "")
            for kind in ("configMapRef", "secretRef"):
                if kind in src:
                    ref = src[kind]
                    data = self.k.read_data(kind, self.ns, ref["name"], optional=ref.get("optional", False))
                    env.update({prefix + k: v for k, v in data.items()})
                    declared.update(prefix + k for k in data)
        for e in self.c.get("env") or []:
            if "valueFrom" in e:
                value = self.value_from(e["valueFrom"])
                if value is not None:
                    env[e["name"]] = value
                    declared.add(e["name"])
            else:
                env[e["name"]] = expand(e.get("value", ""), env)
                declared.add(e["name"])
        mounts = self.volume_mounts()
        kubeconfig = self.project_volumes()
        if kubeconfig is not None and "KUBECONFIG" not in declared:
            env["KUBECONFIG"] = str(kubeconfig)
        # Only the pod's own values are rewritten: a mount at /tmp must not move this
        # kubelet's PATH or VIRTUAL_ENV when the checkout itself lives under /tmp.
        for k in declared:
            v = env[k]
            for mount_path, local in mounts:
                if v == mount_path or v.startswith(mount_path.rstrip("/") + "/"):
                    env[k] = str(local) + v[len(mount_path.rstrip("/")):]
                    break
        # A volume at /tmp (the strategy pods' emptyDir) is where temporary files go, as in
        # a container: TMPDIR points at its local folder unless the pod sets TMPDIR itself.
        tmp = next((local for mount_path, local in mounts if mount_path.rstrip("/") == "/tmp"), None)
        if tmp is not None and "TMPDIR" not in declared:
            env["TMPDIR"] = str(tmp)
        return env

    def value_from(self, vf: dict) -> str | None:
        meta = self.pod["metadata"]
        if "fieldRef" in vf:
            path = vf["fieldRef"]["fieldPath"]
            fields = {
                "metadata.name": self.pod_name, "metadata.namespace": self.ns, "metadata.uid": self.uid,
                "spec.nodeName": NODE_NAME, "spec.serviceAccountName": self.pod["spec"].get("serviceAccountName", ""),
                "status.podIP": self.ip, "status.podIPs": self.ip, "status.hostIP": HOST_IP, "status.hostIPs": HOST_IP,
            }
            if path in fields:
                return fields[path]
            m = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
            if m:
                return (meta.get(m.group(1)) or {}).get(m.group(2), "")
            raise ConfigError(f"unsupported fieldRef {path}")
        if "resourceFieldRef" in vf:  # the raw quantity; divisor not applied
            kind, _, res = vf["resourceFieldRef"]["resource"].partition(".")
            return str((self.c.get("resources") or {}).get(kind, {}).get(res, CAPACITY.get(res, "0")))
        for kind, ref_kind in (("secretKeyRef", "secretRef"), ("configMapKeyRef", "configMapRef")):
            if kind in vf:
                ref = vf[kind]
                data = self.k.read_data(ref_kind, self.ns, ref["name"], optional=ref.get("optional", False))
                if ref["key"] not in data:
                    if ref.get("optional"):
                        return None
                    raise ConfigError(f"couldn't find key {ref['key']} in {kind[:-6]} {self.ns}/{ref['name']}")
                return data[ref["key"]]
        return None

    def volume_mounts(self) -> list[tuple[str, Path]]:
        """(mountPath, local folder) pairs, longest mountPath first."""
        local = {}
        for v in self.pod["spec"].get("volumes") or []:
            if "persistentVolumeClaim" in v:
                local[v["name"]] = self.k.state_dir / "volumes" / self.ns / v["persistentVolumeClaim"]["claimName"]
            else:
                local[v["name"]] = self.dir / "volumes" / v["name"]
        pairs = []
        for m in self.c.get("volumeMounts") or []:
            if m["name"] in local:
                d = local[m["name"]] / m.get("subPath", "")
                d.mkdir(parents=True, exist_ok=True)
                pairs.append((m["mountPath"], d))
        return sorted(pairs, key=lambda p: -len(p[0]))

    # ---- projected volumes: the service account's token, as a kubelet mounts it
    def _projected(self) -> list[tuple[dict, Path]]:
        """(projected volume, its local folder) for the volumes the container mounts."""
        mounted = {m["name"] for m in self.c.get("volumeMounts") or []}
        return [(v["projected"], self.dir / "volumes" / v["name"]) for v in self.pod["spec"].get("volumes") or []
                if "projected" in v and v["name"] in mounted]

    def project_volumes(self) -> Path | None:
        """Fill the projected volumes; returns the pod's kubeconfig when one holds a token."""
        kubeconfig = None
        for vol, folder in self._projected():
            folder.mkdir(parents=True, exist_ok=True)
            token_path = None
            for src in vol.get("sources") or []:
                if "serviceAccountToken" in src:
                    token_path = folder / src["serviceAccountToken"]["path"]
                    self._write(token_path, self.request_token(src["serviceAccountToken"]))
                elif "configMap" in src:
                    cm = src["configMap"]
                    data = self.k.read_data("configMapRef", self.ns, cm["name"], optional=cm.get("optional", False))
                    for item in cm.get("items") or [{"key": k, "path": k} for k in data]:
                        if item["key"] in data:
                            self._write(folder / item["path"], data[item["key"]])
                elif "downwardAPI" in src:
                    for item in src["downwardAPI"].get("items") or []:
                        value = self.value_from({"fieldRef": item["fieldRef"]}) if "fieldRef" in item else ""
                        self._write(folder / item["path"], value or "")
            if token_path is not None and kubeconfig is None:
                kubeconfig = self._write_kubeconfig(token_path, folder / "ca.crt")
        return kubeconfig

    def request_token(self, src: dict) -> str:
        """TokenRequest for the pod's ServiceAccount, bound to this pod (as the kubelet asks)."""
        sa = self.pod["spec"].get("serviceAccountName") or "default"
        seconds = int(src.get("expirationSeconds") or 3607)
        spec: dict = {"expirationSeconds": seconds,
                      "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": self.pod_name, "uid": self.uid}}
        if src.get("audience"):
            spec["audiences"] = [src["audience"]]
        try:
            resp = self.k.core.create_namespaced_service_account_token(
                sa, self.ns, {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec},
                _preload_content=False)
        except ApiException as e:
            raise ConfigError(f"cannot get a token for serviceaccount {self.ns}/{sa}: {e.status} {e.reason}") from None
        status = json.loads(resp.data)["status"]
        expires = datetime.fromisoformat(status["expirationTimestamp"].replace("Z", "+00:00"))
        lifetime = max((expires - datetime.now(UTC)).total_seconds(), 60.0)
        renew_at = time.monotonic() + 0.8 * lifetime
        self.token_renew_at = min(self.token_renew_at or renew_at, renew_at)
        log.info("pod %s/%s: token of serviceaccount %s, bound to the pod, valid %ds", self.ns, self.pod_name, sa, lifetime)
        return status["token"]

    def renew_tokens(self) -> None:
        self.token_renew_at = None
        try:
            for vol, folder in self._projected():
                for src in vol.get("sources") or []:
                    if "serviceAccountToken" in src:
                        self._write(folder / src["serviceAccountToken"]["path"], self.request_token(src["serviceAccountToken"]))
        except (ConfigError, ApiException) as e:
            log.warning("pod %s/%s: token renewal failed (%s); retrying", self.ns, self.pod_name, e)
            self.token_renew_at = time.monotonic() + 10

    def _write_kubeconfig(self, token_path: Path, ca_path: Path) -> Path:
        cfg = self.k.api.configuration
        cluster = {"server": cfg.host}
        if ca_path.exists():
            cluster["certificate-authority"] = str(ca_path)
        doc = {
            "apiVersion": "v1", "kind": "Config", "current-context": "pod",
            "clusters": [{"name": "pod", "cluster": cluster}],
            "users": [{"name": "pod", "user": {"tokenFile": str(token_path)}}],
            "contexts": [{"name": "pod", "context": {"cluster": "pod", "user": "pod", "namespace": self.ns}}],
        }
        path = self.dir / "kubeconfig"
        self._write(path, json.dumps(doc, indent=2))  # JSON is valid kubeconfig YAML
        return path

    @staticmethod
    def _write(path: Path, text: str) -> None:
        """Atomically, readable by the owner only: a reader never sees half a token."""
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text)
        tmp.chmod(0o600)
        tmp.replace(path)

    # ---- readiness
    def check_readiness(self) -> None:
        probe = self.c.get("readinessProbe")
        if not probe or time.monotonic() < self.probe_next:
            return
        self.probe_next = time.monotonic() + probe.get("periodSeconds", 10)
        ok = self.run_probe(probe)
        self.probe_ok, self.probe_fail = (self.probe_ok + 1, 0) if ok else (0, self.probe_fail + 1)
        ready = self.ready
        if not self.ready and self.probe_ok >= probe.get("successThreshold", 1):
            ready = True
        elif self.ready and self.probe_fail >= probe.get("failureThreshold", 3):
            ready = False
        if ready != self.ready:
            self.ready = ready
            self.report()

    def _port(self, port) -> int:
        if isinstance(port, int) or str(port).isdigit():
            return int(port)
        for p in self.c.get("ports") or []:
            if p.get("name") == port:
                return int(p["containerPort"])
        raise ValueError(f"no container port named {port}")

    def run_probe(self, probe: dict) -> bool:
        timeout = probe.get("timeoutSeconds", 1)
        try:
            if "httpGet" in probe:
                h = probe["httpGet"]
                scheme = h.get("scheme", "HTTP").lower()
                url = f"{scheme}://{h.get('host') or self.ip}:{self._port(h['port'])}{h.get('path', '/')}"
                headers = {x["name"]: x["value"] for x in h.get("httpHeaders") or []}
                req = urllib.request.Request(url, headers=headers)
                ctx = ssl._create_unverified_context() if scheme == "https" else None
                if ctx:
                    opened = urllib.request.urlopen(req, timeout=timeout, context=ctx)
                else:
                    opened = _no_proxy.open(req, timeout=timeout)
                with opened as r:
                    return 200 <= r.status < 400
            if "tcpSocket" in probe:
                t = probe["tcpSocket"]
                socket.create_connection((t.get("host") or self.ip, self._port(t["port"])), timeout=timeout).close()
                return True
            if "exec" in probe:
                return subprocess.run(probe["exec"]["command"], env=self.env, cwd=self.dir, timeout=timeout,
                                      capture_output=True).returncode == 0
            return True  # grpc probes: not supported, counted as passing
        except Exception:
            return False

    # ---- status
    def _condition(self, ctype: str, ok: bool, reason: str = "") -> dict:
        status = "True" if ok else "False"
        if self.transitions.get(ctype, ("",))[0] != status:
            self.transitions[ctype] = (status, now())
        c = {"type": ctype, "status": status, "lastProbeTime": None, "lastTransitionTime": self.transitions[ctype][1]}
        if reason and not ok:
            c["reason"] = reason
        return c

    def report(self, final: bool = False) -> None:
        cs = {
            "name": self.c["name"], "image": self.c.get("image", ""), "imageID": "",
            "ready": self.ready, "restartCount": self.restarts, "started": "running" in self.state,
            "state": self.state, "lastState": {"terminated": self.last_terminated} if self.last_terminated else {},
        }
        if self.proc is not None:
            cs["containerID"] = f"local-process://{self.proc.pid}"
        if final:
            code = self.state.get("terminated", {}).get("exitCode", 1)
            phase = "Succeeded" if code == 0 else "Failed"
        else:
            phase = "Running" if self.ever_started else "Pending"
        not_ready = "PodCompleted" if final else "ContainersNotReady"
        status = {
            "phase": phase,
            "hostIP": HOST_IP, "hostIPs": [{"ip": HOST_IP}],
            "podIP": self.ip, "podIPs": [{"ip": self.ip}],
            "startTime": self.pod_started,
            "conditions": [
                self._condition("PodReadyToStartContainers", not final),
                self._condition("Initialized", True),
                self._condition("ContainersReady", self.ready, not_ready),
                self._condition("Ready", self.ready, not_ready),
            ],
            "containerStatuses": [cs],
        }
        try:
            self.k.core.patch_namespaced_pod_status(self.pod_name, self.ns, {"status": status})
        except ApiException as e:
            if e.status == 404:
                self.vanish()
            else:
                log.warning("pod %s/%s: status update failed: %s %s", self.ns, self.pod_name, e.status, e.body)


class Kubelet:
    def __init__(self, api: client.ApiClient, state_dir: Path, pod_cidr: str):
        self.api = api
        self.core = client.CoreV1Api(api)
        self.coord = client.CoordinationV1Api(api)
        self.state_dir = state_dir
        self.pods_dir = state_dir / "pods"
        self.ips = IPAllocator(pod_cidr)
        self.runners: dict[str, PodRunner] = {}
        self.finished: set[str] = set()  # pods this kubelet ran to completion: never started again
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.node_uid = ""
        self.started = now()

    # ---- node and lease
    def register_node(self) -> None:
        body = {"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": NODE_NAME, "labels": NODE_LABELS}, "spec": {"taints": [TAINT]}}
        try:
            node = self.core.create_node(body, _preload_content=False)
            log.info("registered node %s", NODE_NAME)
        except ApiException as e:
            if e.status != 409:
                raise
            node = self.core.patch_node(NODE_NAME, {"metadata": {"labels": NODE_LABELS}}, _preload_content=False)
            log.info("node %s exists: taking it over", NODE_NAME)
            taints = json.loads(node.data).get("spec", {}).get("taints") or []
            if not any(t.get("key") == TAINT["key"] for t in taints):
                node = self.core.patch_node(NODE_NAME, {"spec": {"taints": [*taints, TAINT]}}, _preload_content=False)
        self.node_uid = json.loads(node.data)["metadata"]["uid"]
        self.post_node_status()
        self.renew_lease()

    def post_node_status(self) -> None:
        t = now()
        conds = [
            ("Ready", "True", "KubeletReady", "the local-process kubelet is posting ready status"),
            ("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
            ("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
            ("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
        ]
        u = platform.uname()
        status = {
            "conditions": [{"type": ct, "status": s, "reason": r, "message": m, "lastHeartbeatTime": t,
                            "lastTransitionTime": self.started} for ct, s, r, m in conds],
            "addresses": [{"type": "InternalIP", "address": HOST_IP}, {"type": "Hostname", "address": NODE_NAME}],
            "capacity": CAPACITY, "allocatable": CAPACITY,
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
            "nodeInfo": {"machineID": "", "systemUUID": "", "bootID": "", "kernelVersion": u.release,
                         "osImage": "local processes", "containerRuntimeVersion": "local-process://0.1",
                         "kubeletVersion": "v0.1.0-local-process", "kubeProxyVersion": "", "operatingSystem": "linux",
                         "architecture": "amd64"},
        }
        self.core.patch_node_status(NODE_NAME, {"status": status}, _preload_content=False)

    def renew_lease(self) -> None:
        spec = {"holderIdentity": NODE_NAME, "leaseDurationSeconds": LEASE_SECONDS, "renewTime": micro_now()}
        try:
            self.coord.patch_namespaced_lease(NODE_NAME, "kube-node-lease", {"spec": spec}, _preload_content=False)
        except ApiException as e:
            if e.status != 404:
                raise
            owner = {"apiVersion": "v1", "kind": "Node", "name": NODE_NAME, "uid": self.node_uid}
            self.coord.create_namespaced_lease("kube-node-lease", {
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": NODE_NAME, "namespace": "kube-node-lease", "ownerReferences": [owner]},
                "spec": spec}, _preload_content=False)

    def heartbeat(self) -> None:
        last_status = time.monotonic()
        while not self.stopping.wait(LEASE_RENEW_EVERY):
            try:
                self.renew_lease()
                if time.monotonic() - last_status >= NODE_STATUS_EVERY:
                    self.post_node_status()
                    last_status = time.monotonic()
            except ApiException as e:
                log.warning("heartbeat failed: %s %s", e.status, e.reason)
                if e.status == 404:
                    with contextlib.suppress(Exception):
                        self.register_node()
            except Exception as e:
                log.warning("heartbeat failed: %s", e)

    # ---- API helpers for the runners
    def read_data(self, kind: str, ns: str, name: str, optional: bool) -> dict[str, str]:
        read = self.core.read_namespaced_secret if kind == "secretRef" else self.core.read_namespaced_config_map
        try:
            obj = json.loads(read(name, ns, _preload_content=False).data)
        except ApiException as e:
            if e.status == 404 and optional:
                return {}
            if e.status == 404:
                raise ConfigError(f"{'secret' if kind == 'secretRef' else 'configmap'} \"{name}\" not found") from None
            raise
        if kind == "secretRef":
            return {k: base64.b64decode(v).decode(errors="replace") for k, v in (obj.get("data") or {}).items()}
        data = dict(obj.get("data") or {})
        data.update({k: base64.b64decode(v).decode(errors="replace") for k, v in (obj.get("binaryData") or {}).items()})
        return data

    def delete_now(self, ns: str, name: str, uid: str) -> None:
        body = {"gracePeriodSeconds": 0, "preconditions": {"uid": uid}}
        try:
            self.core.delete_namespaced_pod(name, ns, body=body, _preload_content=False)
            log.info("pod %s/%s: removed", ns, name)
        except ApiException as e:
            if e.status not in (404, 409):
                log.warning("pod %s/%s: delete failed: %s %s", ns, name, e.status, e.body)

    def forget(self, runner: PodRunner) -> None:
        with self.lock:
            self.runners.pop(runner.uid, None)
            if runner.state.get("terminated") or runner.vanished or runner.deleting():
                self.finished.add(runner.uid)
        self.ips.release(runner.uid)

    # ---- pods
    def on_pod(self, pod: dict) -> None:
        meta = pod["metadata"]
        uid = meta["uid"]
        with self.lock:
            runner = self.runners.get(uid)
            if runner is not None:
                runner.update(pod)
                return
            done = uid in self.finished or pod.get("status", {}).get("phase") in ("Succeeded", "Failed")
            if not done and not self.stopping.is_set():
                runner = self.runners[uid] = PodRunner(self, pod)
                runner.start()
                return
        if done and meta.get("deletionTimestamp"):
            self.delete_now(meta["namespace"], meta["name"], uid)

    def on_pod_deleted(self, pod: dict) -> None:
        with self.lock:
            runner = self.runners.get(pod["metadata"]["uid"])
        if runner is not None:
            runner.update(pod)
            runner.vanish()

    def sync_pods(self) -> None:
        """List, then watch, the pods bound to this node; relist after any watch error."""
        selector = f"spec.nodeName={NODE_NAME}"
        while not self.stopping.is_set():
            try:
                listed = json.loads(self.core.list_pod_for_all_namespaces(field_selector=selector, _preload_content=False).data)
                uids = set()
                for pod in listed["items"]:  # pods from a previous kubelet keep their addresses
                    if pod.get("status", {}).get("podIP") and pod["status"].get("phase") not in ("Succeeded", "Failed"):
                        self.ips.allocate(pod["metadata"]["uid"], pod["status"]["podIP"])
                for pod in listed["items"]:
                    uids.add(pod["metadata"]["uid"])
                    self.on_pod(pod)
                with self.lock:
                    gone = [r for uid, r in self.runners.items() if uid not in uids]
                for r in gone:
                    r.vanish()
                w = watch.Watch()
                for ev in w.stream(self.core.list_pod_for_all_namespaces, field_selector=selector,
                                   resource_version=listed["metadata"]["resourceVersion"], timeout_seconds=300,
                                   allow_watch_bookmarks=True):
                    if ev["type"] in ("ADDED", "MODIFIED"):
                        self.on_pod(ev["raw_object"])
                    elif ev["type"] == "DELETED":
                        self.on_pod_deleted(ev["raw_object"])
            except Exception as e:
                if self.stopping.is_set():
                    break
                log.warning("pod watch failed (%s); listing again", e)
                time.sleep(1)

    def shutdown(self) -> None:
        """Stop every pod process (SIGTERM, SIGKILL after 5s). Pod objects are left as they are."""
        self.stopping.set()
        with self.lock:
            runners = list(self.runners.values())
        for r in runners:
            r.wake.set()
        for r in runners:
            r.join(timeout=8)


class _Stop(BaseException):
    """Raised by the signal handler, so that it also interrupts a blocking watch."""


def main() -> int:
    ap = argparse.ArgumentParser(description="the kubelet of the local-process node")
    ap.add_argument("--kubeconfig", required=True)
    ap.add_argument("--state-dir", required=True, type=Path, help="pods/<namespace>/<pod>/ is created under it")
    ap.add_argument("--pod-cidr", default="127.77.0.0/16")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s [%(threadName)s] %(message)s")
    kubelet = Kubelet(config.new_client_from_config(config_file=args.kubeconfig), args.state_dir.resolve(), args.pod_cidr)

    def on_signal(signum, _frame):
        raise _Stop(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        last_error = ""
        while True:  # localcluster starts this alongside the API server: wait until that serves
            try:
                kubelet.register_node()
                break
            except (ApiException, urllib3.exceptions.HTTPError) as e:
                error = f"{getattr(e, 'status', '')} {getattr(e, 'reason', '') or e}"
                if error != last_error:
                    log.info("cannot register the node yet (%s); retrying", error)
                    last_error = error
                time.sleep(0.2)
        threading.Thread(target=kubelet.heartbeat, name="heartbeat", daemon=True).start()
        kubelet.sync_pods()
    except _Stop as e:
        log.info("%s: stopping the pods and exiting", e)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        kubelet.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
