"""The real cluster access layer (phasegate.cli.kube.Kube) against a tiny local HTTP
server that answers like an apiserver: kubeconfig handling, the requests it sends,
and how each failure maps to a message and an exit code."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from phasegate.cli import kube
from phasegate.cli.errors import CliError

from .fakes import mid_ladder_status, strategy_obj


class FakeApiserver:
    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.routes: dict[tuple[str, str], tuple[int, object]] = {}
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                outer.requests.append({
                    "method": self.command,
                    "path": self.path,
                    "content_type": self.headers.get("Content-Type"),
                    "auth": self.headers.get("Authorization"),
                    "body": json.loads(body) if body else None,
                })
                path = self.path.split("?")[0]
                not_found = (404, {"kind": "Status", "code": 404, "message": "404 page not found"})
                status, payload = outer.routes.get((self.command, path), not_found)
                data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = do_PUT = _serve

            def log_message(self, *args) -> None:  # quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def write_kubeconfig(path: Path, server: str, namespace: str | None = "trading") -> Path:
    ctx = {"cluster": "c", "user": "bob"}
    if namespace:
        ctx["namespace"] = namespace
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": server}}],
        "users": [{"name": "bob", "user": {"token": "t0ken"}}, {"name": "eve", "user": {"token": "other"}}],
        "contexts": [
            {"name": "main", "context": ctx},
            {"name": "second", "context": {"cluster": "c", "user": "eve"}},
        ],
        "current-context": "main",
    }))
    return path


@pytest.fixture
def api():
    server = FakeApiserver()
    yield server
    server.close()


@pytest.fixture
def kc(tmp_path, api):
    return write_kubeconfig(tmp_path / "kubeconfig", api.url)


STRATEGY = "/apis/phasegate.dev/v1alpha1/namespaces/trading/tradingstrategies/momentum"


def test_context_namespace_and_user(kc):
    k = kube.Kube(kubeconfig=str(kc))
    assert k.default_namespace == "trading"
    assert k.context_user == "bob"
    assert str(kc) in k.description and "main" in k.description
    k2 = kube.Kube(kubeconfig=str(kc), context="second")
    assert k2.default_namespace == "default" and k2.context_user == "eve"


def test_kubeconfig_env_is_read_at_call_time(kc, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(kc))
    assert kube.kubeconfig_path() == str(kc)
    assert kube.Kube().default_namespace == "trading"


def test_unknown_context(kc):
    with pytest.raises(CliError) as e:
        kube.Kube(kubeconfig=str(kc), context="prod")
    assert e.value.code == 3 and "contexts: main, second" in e.value.message


def test_missing_kubeconfig(tmp_path, monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(CliError) as e:
        kube.Kube(kubeconfig=str(tmp_path / "none"))
    assert e.value.code == 3
    assert str(tmp_path / "none") in e.value.message and "--kubeconfig" in e.value.message
    assert "make cluster" in e.value.message


def test_unreachable_cluster(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = write_kubeconfig(tmp_path / "kc", f"http://127.0.0.1:{port}")
    k = kube.Kube(kubeconfig=str(cfg), request_timeout=2)
    with pytest.raises(CliError) as e:
        k.get_strategy("trading", "momentum")
    assert e.value.code == 3
    assert "cannot reach the cluster" in e.value.message and str(cfg) in e.value.message
    assert f"127.0.0.1:{port}" in e.value.message
    assert k.whoami() == "bob"  # falls back to the context's user


def test_get_sends_the_token_and_returns_the_dict(api, kc):
    obj = strategy_obj(namespace="trading", status=mid_ladder_status())
    api.routes[("GET", STRATEGY)] = (200, obj)
    k = kube.Kube(kubeconfig=str(kc))
    assert k.get_strategy("trading", "momentum") == obj
    assert api.requests[0]["auth"] == "Bearer t0ken"


def test_not_found_object_vs_missing_crd(api, kc):
    k = kube.Kube(kubeconfig=str(kc))
    api.routes[("GET", STRATEGY)] = (404, {"kind": "Status", "reason": "NotFound", "code": 404,
                                           "details": {"name": "momentum", "kind": "tradingstrategies"}})
    with pytest.raises(kube.NotFound) as e:
        k.get_strategy("trading", "momentum")
    assert e.value.code == 3 and "'momentum' not found in namespace 'trading'" in e.value.message
    api.routes.pop(("GET", STRATEGY))  # default 404 without details: the type is unknown
    with pytest.raises(kube.NotFound) as e:
        k.get_strategy("trading", "momentum")
    assert "CRD" in e.value.message and "phasegate install-crds" in e.value.message
    with pytest.raises(kube.NotFound) as e:
        k.list_strategies(None)
    assert "install-crds" in e.value.message


def test_list_namespaced_and_cluster_wide(api, kc):
    api.routes[("GET", "/apis/phasegate.dev/v1alpha1/namespaces/trading/tradingstrategies")] = (200, {"items": [{"a": 1}]})
    api.routes[("GET", "/apis/phasegate.dev/v1alpha1/tradingstrategies")] = (200, {"items": [{"a": 1}, {"b": 2}]})
    k = kube.Kube(kubeconfig=str(kc))
    assert len(k.list_strategies("trading")) == 1
    assert len(k.list_strategies(None)) == 2


def test_patch_is_a_merge_patch_and_409_is_a_conflict(api, kc):
    k = kube.Kube(kubeconfig=str(kc))
    api.routes[("PATCH", STRATEGY)] = (200, {"ok": True})
    patch = {"metadata": {"resourceVersion": "7", "annotations": {"phasegate.dev/request": "{}"}}}
    k.patch_strategy("trading", "momentum", patch)
    sent = api.requests[-1]
    assert sent["content_type"] == "application/merge-patch+json"
    assert sent["body"] == patch
    assert "fieldManager=phasegate-cli" in sent["path"]
    api.routes[("PATCH", STRATEGY)] = (409, {"kind": "Status", "code": 409, "reason": "Conflict",
                                             "message": "the object has been modified"})
    with pytest.raises(kube.Conflict):
        k.patch_strategy("trading", "momentum", patch)


def test_scale_statefulset(api, kc):
    k = kube.Kube(kubeconfig=str(kc))
    path = "/apis/apps/v1/namespaces/trading/statefulsets/momentum"
    api.routes[("PATCH", path)] = (200, {})
    assert k.scale_statefulset("trading", "momentum", 0) is True
    assert api.requests[-1]["body"] == {"spec": {"replicas": 0}}
    assert api.requests[-1]["content_type"] == "application/merge-patch+json"
    api.routes.pop(("PATCH", path))
    assert k.scale_statefulset("trading", "momentum", 0) is False  # 404 ignored


def test_forbidden_and_unauthorized(api, kc):
    k = kube.Kube(kubeconfig=str(kc))
    api.routes[("GET", STRATEGY)] = (403, {"kind": "Status", "code": 403, "message": 'user "bob" cannot get'})
    with pytest.raises(CliError) as e:
        k.get_strategy("trading", "momentum")
    assert e.value.code == 3 and "forbidden" in e.value.message and "RBAC" in e.value.message
    api.routes[("GET", STRATEGY)] = (401, {"kind": "Status", "code": 401})
    with pytest.raises(CliError) as e:
        k.get_strategy("trading", "momentum")
    assert e.value.code == 3 and "401" in e.value.message and "credentials" in e.value.message


def test_whoami_from_selfsubjectreview(api, kc):
    k = kube.Kube(kubeconfig=str(kc))
    api.routes[("POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews")] = (
        201, {"kind": "SelfSubjectReview", "status": {"userInfo": {"username": "bob@example.com"}}},
    )
    assert k.whoami() == "bob@example.com"
    assert api.requests[-1]["body"] == {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}


def test_whoami_falls_back_to_the_context_user(api, kc):
    k = kube.Kube(kubeconfig=str(kc))  # no route: 404 (an apiserver older than 1.28)
    assert k.whoami() == "bob"


def test_crd_calls(api, kc):
    k = kube.Kube(kubeconfig=str(kc))
    base = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
    assert k.get_crd("x.y") is None
    api.routes[("POST", base)] = (409, {"kind": "Status", "code": 409, "message": "exists"})
    with pytest.raises(kube.Conflict):
        k.create_crd({"metadata": {"name": "x.y"}})
    api.routes[("PUT", base + "/x.y")] = (200, {"metadata": {"name": "x.y"}})
    assert k.replace_crd({"metadata": {"name": "x.y", "resourceVersion": "3"}})["metadata"]["name"] == "x.y"
    assert api.requests[-1]["method"] == "PUT"
