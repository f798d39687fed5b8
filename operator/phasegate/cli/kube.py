"""Cluster access for the CLI: the few calls it makes, and who the user is.

Everything the commands need from the apiserver goes through `KubeApi`, so unit tests
replace it with an in-memory fake and the commands never know. The real implementation
(`Kube`) speaks plain JSON to the apiserver through the kubernetes client's transport
(kubeconfig loading, exec and token auth, TLS) without its generated models: objects
stay the dicts the apiserver sent, so a field the client does not know is never lost.

Errors come out as `CliError` with a message that names the kubeconfig, the context
and the fix, and exit code 3 (not found, cannot reach or access the cluster).
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional, Protocol
from urllib.parse import quote

from phasegate.api import contract

from .errors import REFUSED, UNREACHABLE, CliError

CRD_NAME = f"{contract.PLURAL}.{contract.GROUP}"
_STRATEGIES = f"/apis/{contract.GROUP}/{contract.VERSION}"
_SA_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


class Conflict(Exception):
    """409: the object changed since it was read (optimistic concurrency)."""


class NotFound(CliError):
    def __init__(self, message: str) -> None:
        super().__init__(message, UNREACHABLE)


def strategy_not_found(namespace: str, name: str) -> str:
    return (
        f"tradingstrategy {name!r} not found in namespace {namespace!r}: "
        f"check the name with `phasegate list -n {namespace}` (or `phasegate list -A`), "
        "or pass the right namespace with -n"
    )


CRD_MISSING = (
    f"the TradingStrategy CRD ({CRD_NAME}) is not installed in this cluster: "
    "run `phasegate install-crds` (or `make install`), or check that --context / KUBECONFIG "
    "point at the right cluster"
)


class KubeApi(Protocol):
    """What the commands need from a cluster. `Kube` talks to a real one."""

    default_namespace: str
    description: str  # "kubeconfig X, context Y, server Z": for error messages

    def get_strategy(self, namespace: str, name: str) -> dict[str, Any]: ...

    def list_strategies(self, namespace: Optional[str]) -> list[dict[str, Any]]: ...

    def patch_strategy(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        """JSON merge patch; raises Conflict on 409 (a stale metadata.resourceVersion)."""
        ...

    def scale_statefulset(self, namespace: str, name: str, replicas: int) -> bool:
        """Set spec.replicas; False when there is no such StatefulSet."""
        ...

    def whoami(self) -> str: ...

    def get_crd(self, name: str) -> Optional[dict[str, Any]]: ...

    def create_crd(self, body: dict[str, Any]) -> dict[str, Any]:
        """Raises Conflict when it already exists."""
        ...

    def replace_crd(self, body: dict[str, Any]) -> dict[str, Any]:
        """body carries metadata.resourceVersion; raises Conflict when it is stale."""
        ...


def kubeconfig_path(explicit: Optional[str] = None) -> str:
    """The kubeconfig the client will read: --kubeconfig, else $KUBECONFIG, else ~/.kube/config."""
    if explicit:
        return os.path.expanduser(explicit)
    env = os.environ.get("KUBECONFIG", "").strip()
    if env:
        return env
    return os.path.expanduser("~/.kube/config")


def _exists(path: str) -> bool:
    return any(os.path.exists(os.path.expanduser(p)) for p in path.split(os.pathsep) if p)


_FIX_KUBECONFIG = (
    "pass --kubeconfig PATH, set KUBECONFIG, or for the local control plane run `make cluster` "
    "and export KUBECONFIG=.state/cluster/kubeconfig"
)


class ApiError(Exception):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"{status}: {body}")
        self.status = status
        self.body = body
        try:
            self.data: dict[str, Any] = json.loads(body)
        except ValueError:
            self.data = {}

    @property
    def message(self) -> str:
        return str(self.data.get("message") or self.body.strip() or f"HTTP {self.status}")

    @property
    def names_object(self) -> bool:
        """A 404 about a named object (it does not exist), not about its resource type."""
        return bool((self.data.get("details") or {}).get("name"))


class Kube:
    """KubeApi over a real apiserver, configured from a kubeconfig (or in-cluster)."""

    def __init__(
        self,
        kubeconfig: Optional[str] = None,
        context: Optional[str] = None,
        request_timeout: float = 15.0,
    ) -> None:
        from kubernetes import client, config

        self.timeout = request_timeout
        self.config_file = kubeconfig_path(kubeconfig)
        self.context_name = context or ""
        self.context_user = ""
        self.default_namespace = "default"
        cfg = client.Configuration()
        if _exists(self.config_file):
            try:
                contexts, active = config.list_kube_config_contexts(config_file=self.config_file)
                chosen = active
                if context:
                    chosen = next((c for c in contexts or [] if c.get("name") == context), None)
                    if chosen is None:
                        names = ", ".join(c.get("name", "?") for c in contexts or []) or "none"
                        raise CliError(
                            f"context {context!r} is not in kubeconfig {self.config_file} "
                            f"(contexts: {names}): pass one of them with --context",
                            UNREACHABLE,
                        )
                config.load_kube_config(
                    config_file=self.config_file,
                    context=context,
                    client_configuration=cfg,
                    persist_config=False,
                )
            except config.ConfigException as exc:
                raise CliError(
                    f"cannot use kubeconfig {self.config_file}: {exc}; {_FIX_KUBECONFIG}",
                    UNREACHABLE,
                ) from exc
            ctx = (chosen or {}).get("context") or {}
            self.context_name = (chosen or {}).get("name", "") or self.context_name
            self.context_user = ctx.get("user", "") or ""
            self.default_namespace = ctx.get("namespace") or "default"
            self.description = f"kubeconfig {self.config_file}, context {self.context_name or '(current)'}"
        elif os.environ.get("KUBERNETES_SERVICE_HOST") and not kubeconfig:
            config.load_incluster_config(client_configuration=cfg)
            try:
                with open(_SA_NAMESPACE) as fh:
                    self.default_namespace = fh.read().strip() or "default"
            except OSError:
                pass
            self.context_user = "serviceaccount"
            self.description = "in-cluster service account"
        else:
            raise CliError(f"no kubeconfig at {self.config_file}: {_FIX_KUBECONFIG}", UNREACHABLE)
        self.server = cfg.host
        self.description += f", server {self.server}"
        self._api = client.ApiClient(cfg)

    # --- transport -------------------------------------------------------------

    def _call(
        self,
        method: str,
        path: str,
        body: Any = None,
        content_type: str = "application/json",
        query: Optional[list[tuple[str, str]]] = None,
    ) -> dict[str, Any]:
        import urllib3
        from kubernetes.client.exceptions import ApiException

        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        try:
            params = self._api.param_serialize(
                method=method,
                resource_path=path,
                query_params=query or [],
                header_params=headers,
                body=body,
                auth_settings=["BearerToken"],
            )
            resp = self._api.call_api(*params, _request_timeout=self.timeout)
            data = resp.read()
            status = resp.status
        except (urllib3.exceptions.HTTPError, OSError, ApiException) as exc:
            raise CliError(
                f"cannot reach the cluster at {self.server} ({self.description}): "
                f"{_short(exc)}; is the apiserver running? Check the kubeconfig, or {_FIX_KUBECONFIG}",
                UNREACHABLE,
            ) from exc
        text = data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data or "")
        if 200 <= status < 300:
            return json.loads(text) if text.strip() else {}
        err = ApiError(status, text)
        if status == 401:
            raise CliError(
                f"the cluster at {self.server} refused the credentials of {self.description} "
                f"(401 Unauthorized): refresh them (log in again) or pick another --context",
                UNREACHABLE,
            )
        if status == 403:
            raise CliError(
                f"forbidden ({self.description}): {err.message}; ask for RBAC rights on "
                f"{contract.PLURAL}.{contract.GROUP} (get, list, patch) and statefulsets (patch)",
                UNREACHABLE,
            )
        raise err

    # --- TradingStrategy -------------------------------------------------------

    def get_strategy(self, namespace: str, name: str) -> dict[str, Any]:
        try:
            return self._call("GET", f"{_STRATEGIES}/namespaces/{_q(namespace)}/{contract.PLURAL}/{_q(name)}")
        except ApiError as err:
            if err.status == 404:
                raise NotFound(strategy_not_found(namespace, name) if err.names_object else CRD_MISSING) from err
            raise _unexpected(err, f"reading tradingstrategy {namespace}/{name}") from err

    def list_strategies(self, namespace: Optional[str]) -> list[dict[str, Any]]:
        path = (
            f"{_STRATEGIES}/namespaces/{_q(namespace)}/{contract.PLURAL}"
            if namespace
            else f"{_STRATEGIES}/{contract.PLURAL}"
        )
        try:
            return list(self._call("GET", path).get("items") or [])
        except ApiError as err:
            if err.status == 404:
                raise NotFound(CRD_MISSING) from err
            raise _unexpected(err, "listing tradingstrategies") from err

    def patch_strategy(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        path = f"{_STRATEGIES}/namespaces/{_q(namespace)}/{contract.PLURAL}/{_q(name)}"
        try:
            return self._call("PATCH", path, patch, "application/merge-patch+json", [("fieldManager", "phasegate-cli")])
        except ApiError as err:
            if err.status == 409:
                raise Conflict(err.message) from err
            if err.status == 404:
                raise NotFound(strategy_not_found(namespace, name) if err.names_object else CRD_MISSING) from err
            raise _unexpected(err, f"writing the request annotation on {namespace}/{name}") from err

    # --- StatefulSet (the kill switch) ------------------------------------------

    def scale_statefulset(self, namespace: str, name: str, replicas: int) -> bool:
        path = f"/apis/apps/v1/namespaces/{_q(namespace)}/statefulsets/{_q(name)}"
        try:
            self._call(
                "PATCH", path, {"spec": {"replicas": replicas}}, "application/merge-patch+json",
                [("fieldManager", "phasegate-cli")],
            )
        except ApiError as err:
            if err.status == 404:
                return False
            raise _unexpected(err, f"scaling statefulset {namespace}/{name}") from err
        return True

    # --- who am I ----------------------------------------------------------------

    def whoami(self) -> str:
        """The authenticated user (SelfSubjectReview), else the kubeconfig context's user name."""
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
        try:
            out = self._call("POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews", body)
            name = ((out.get("status") or {}).get("userInfo") or {}).get("username")
            if name:
                return str(name)
        except (ApiError, CliError):
            pass  # older apiserver, or not allowed: fall back to the kubeconfig
        return self.context_user or "unknown"

    # --- CRD -------------------------------------------------------------------

    def get_crd(self, name: str) -> Optional[dict[str, Any]]:
        try:
            return self._call("GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{_q(name)}")
        except ApiError as err:
            if err.status == 404:
                return None
            raise _unexpected(err, f"reading CRD {name}") from err

    def create_crd(self, body: dict[str, Any]) -> dict[str, Any]:
        try:
            return self._call("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", body)
        except ApiError as err:
            if err.status == 409:
                raise Conflict(err.message) from err
            raise _unexpected(err, "creating the CRD") from err

    def replace_crd(self, body: dict[str, Any]) -> dict[str, Any]:
        name = body["metadata"]["name"]
        try:
            return self._call("PUT", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{_q(name)}", body)
        except ApiError as err:
            if err.status == 409:
                raise Conflict(err.message) from err
            raise _unexpected(err, "replacing the CRD") from err


def _q(part: str) -> str:
    return quote(part, safe="")


def _short(exc: BaseException) -> str:
    text = str(getattr(exc, "reason", None) or exc)
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _unexpected(err: ApiError, doing: str) -> CliError:
    if err.status == 422:
        return CliError(f"the apiserver refused {doing} (422 Invalid): {err.message}", REFUSED)
    return CliError(f"the apiserver failed {doing} ({err.status}): {err.message}", UNREACHABLE)


def connect(kubeconfig: Optional[str] = None, context: Optional[str] = None) -> KubeApi:
    """The real cluster of a kubeconfig and context. Tests replace this function."""
    return Kube(kubeconfig=kubeconfig, context=context)
