"""The `phasegate` command (also `kubectl phasegate`, the same entry point).

Exit codes: 0 ok; 1 refused, rejected or bad arguments; 2 the operator (or the
apiserver) did not answer in time; 3 not found, or the cluster cannot be reached.
"""

from __future__ import annotations

import os
import sys
import time
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.text import Text
from typer.core import TyperGroup

try:  # typer >= 0.2x vendors click
    from typer._click.exceptions import NoArgsIsHelpError, UsageError
except ImportError:  # pragma: no cover - older typer on top of click
    from click.exceptions import NoArgsIsHelpError, UsageError
from typing import Annotated

import phasegate
from phasegate.api import contract
from phasegate.policy.requests import Verb

from . import actions, crds, kube, render
from .errors import NO_ANSWER, OK, REFUSED, CliError


def _console(stderr: bool = False) -> Console:
    # Piped output (tests, `| less`, CI logs) gets wide lines instead of rich's 80 columns.
    c = Console(stderr=stderr)
    if not c.is_terminal and "COLUMNS" not in os.environ:
        c = Console(stderr=stderr, width=200)
    return c


def _error(message: str) -> None:
    err = _console(stderr=True)
    err.print(Text.assemble(("error: ", "bold red"), message))


class _Group(TyperGroup):
    """Maps failures to the CLI's exit codes: usage errors are refusals (1), not 2,
    because 2 means "the operator did not answer"."""

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except NoArgsIsHelpError as exc:
            exc.exit_code = OK  # a bare `phasegate` shows the help, like kubectl
            raise
        except UsageError as exc:
            exc.exit_code = REFUSED
            raise

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except NoArgsIsHelpError:
            raise
        except UsageError as exc:
            exc.exit_code = REFUSED
            raise
        except CliError as exc:
            _error(exc.message)
            raise typer.Exit(exc.code) from None


class _App(typer.Typer):
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        # As a kubectl plugin (kubectl-phasegate) the usage line says `kubectl phasegate`.
        if "prog_name" not in kwargs and Path(sys.argv[0]).name.startswith("kubectl-"):
            kwargs["prog_name"] = "kubectl phasegate"
        return super().__call__(*args, **kwargs)


app = _App(
    cls=_Group,
    name="phasegate",
    help="Take trading strategies up their capital ladder, and halt them. Also `kubectl phasegate`.",
    epilog=(
        "Exit codes: 0 ok; 1 refused, rejected or bad arguments; 2 the operator did not answer "
        "in time; 3 not found, or the cluster cannot be reached."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# --- options shared by every command that talks to the cluster ---------------------
# Accepted before the command (`phasegate -n ns status x`) and after it
# (`phasegate status x -n ns`, the kubectl habit); the later one wins.

NamespaceOpt = Annotated[
    Optional[str],
    typer.Option(
        "--namespace", "-n", help="Namespace. Default: the kubeconfig context's namespace, else default.", show_default=False
    ),
]
KubeconfigOpt = Annotated[
    Optional[str],
    typer.Option("--kubeconfig", help="Kubeconfig file. Default: $KUBECONFIG, else ~/.kube/config.", show_default=False),
]
ContextOpt = Annotated[
    Optional[str], typer.Option("--context", help="Kubeconfig context. Default: the current context.", show_default=False)
]
ReasonOpt = Annotated[
    str, typer.Option("--reason", "-r", help="Why (required, recorded in history and as an Event).", show_default=False)
]
TimeoutOpt = Annotated[
    float, typer.Option("--timeout", min=0, help="Seconds to wait for the operator's answer (exit 2 when none).")
]
NoWaitOpt = Annotated[bool, typer.Option("--no-wait", help="Return once the request is written.")]
ForceOpt = Annotated[
    bool, typer.Option("--force", help="Replace a request the operator has not answered yet.")
]


class SeverityChoice(str, Enum):
    low = "low"
    medium = "medium"
    high = "high"
    critical = "critical"


@app.callback()
def _global(
    ctx: typer.Context,
    namespace: NamespaceOpt = None,
    kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None,
) -> None:
    ctx.obj = {"namespace": namespace, "kubeconfig": kubeconfig, "context": context}


def _session(
    ctx: typer.Context, namespace: Optional[str], kubeconfig: Optional[str], context: Optional[str]
) -> tuple[kube.KubeApi, str]:
    g = ctx.find_root().obj or {}
    k = kube.connect(kubeconfig or g.get("kubeconfig"), context or g.get("context"))
    return k, namespace or g.get("namespace") or k.default_namespace


def _now() -> datetime:
    return datetime.now(UTC)


# --- read-only commands ------------------------------------------------------------


@app.command()
def status(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="TradingStrategy name.", show_default=False)],
    watch: Annotated[bool, typer.Option("--watch", "-w", help="Live view, refreshed every second; Ctrl-C to quit.")] = False,
    namespace: NamespaceOpt = None,
    kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None,
) -> None:
    """Ladder, gates, breakers, conditions and recent history of one strategy."""
    k, ns = _session(ctx, namespace, kubeconfig, context)
    obj = k.get_strategy(ns, name)
    out = _console()
    if not watch:
        out.print(render.render_status(obj, _now()))
        lease = _leader_lease(k, ns)
        line = render.leader_line(lease, _now()) if lease else None
        if line is not None:
            out.print(line)
        return
    _watch(k, ns, name, obj, out)


def _leader_lease(k: kube.KubeApi, ns: str) -> Optional[dict[str, Any]]:
    """The operator's leader Lease: in $PHASEGATE_LEASE_NAMESPACE, the strategy's namespace,
    phasegate-system or default, the first found. None when none can be read (skipped)."""
    call = getattr(k, "_call", None)
    if call is None:
        return None
    places = (os.environ.get("PHASEGATE_LEASE_NAMESPACE"), ns, "phasegate-system", "default")
    for lease_ns in dict.fromkeys(x for x in places if x):
        try:
            lease = call("GET", f"/apis/coordination.k8s.io/v1/namespaces/{lease_ns}/leases/phasegate-leader")
        except Exception:  # noqa: BLE001 - absent, forbidden or unreachable: the status view stands alone
            continue
        if isinstance(lease, dict) and lease.get("spec") is not None:
            return lease
    return None


def _watch(k: kube.KubeApi, ns: str, name: str, obj: dict[str, Any], out: Console, interval: float = 1.0) -> None:
    from rich.console import Group
    from rich.live import Live

    def view(o: dict[str, Any], note: Optional[str]) -> Any:
        footer = Text(
            f"watching {ns}/{name} (every {interval:g}s) · {_now():%H:%M:%SZ} · Ctrl-C to quit"
            + (f" · {note}" if note else ""),
            style="dim" if not note else "yellow",
        )
        return Group(render.render_status(o, _now()), footer)

    note: Optional[str] = None
    try:
        with Live(view(obj, None), console=out, screen=out.is_terminal, auto_refresh=False) as live:
            while True:
                time.sleep(interval)
                try:
                    obj = k.get_strategy(ns, name)
                    note = None
                except kube.NotFound:
                    raise
                except CliError as exc:  # a blip of the apiserver: keep the last view, say so
                    note = f"last read failed: {exc.message}"
                live.update(view(obj, note), refresh=True)
    except KeyboardInterrupt:
        pass
    if out.is_terminal:
        out.print(render.render_status(obj, _now()))


@app.command("list")
def list_(
    ctx: typer.Context,
    all_namespaces: Annotated[bool, typer.Option("--all-namespaces", "-A", help="Every namespace.")] = False,
    namespace: NamespaceOpt = None,
    kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None,
) -> None:
    """Strategies in the namespace (or all of them with -A)."""
    k, ns = _session(ctx, namespace, kubeconfig, context)
    items = k.list_strategies(None if all_namespaces else ns)
    if not items:
        where = "any namespace" if all_namespaces else f"namespace {ns}"
        _console(stderr=True).print(f"No TradingStrategies found in {where}.")
        return
    _console().print(render.render_list(items, _now(), all_namespaces))


@app.command()
def history(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="TradingStrategy name.", show_default=False)],
    limit: Annotated[int, typer.Option("--limit", "-l", min=0, help="Newest N entries; 0 for all kept in status.")] = 20,
    namespace: NamespaceOpt = None,
    kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None,
) -> None:
    """Transitions and manual actions, newest last."""
    k, ns = _session(ctx, namespace, kubeconfig, context)
    obj = k.get_strategy(ns, name)
    _console().print(render.render_history(obj, _now(), limit or None))


# --- manual actions -----------------------------------------------------------------


def _act(
    ctx: typer.Context,
    verb: Verb,
    name: str,
    reason: str,
    namespace: Optional[str],
    kubeconfig: Optional[str],
    context: Optional[str],
    timeout: float,
    no_wait: bool,
    force: bool = False,
    severity: Optional[str] = None,
    target: Optional[str] = None,
) -> None:
    reason = actions.check_reason(reason)  # before any cluster call
    k, ns = _session(ctx, namespace, kubeconfig, context)
    out, err = _console(), _console(stderr=True)
    by = k.whoami()
    scaled: Optional[bool] = None
    if verb is Verb.HALT:
        # The kill switch must work with the operator down: write the request, and
        # scale the StatefulSet to 0 ourselves whatever happened to the request.
        write_error: Optional[CliError] = None
        req = None
        try:
            req = actions.submit(k, ns, name, verb, reason, by, force=force)
        except kube.NotFound:
            raise
        except CliError as exc:
            write_error = exc
        try:
            scaled = k.scale_statefulset(ns, name, 0)
        except CliError as exc:
            _error(f"could not scale StatefulSet {ns}/{name} to 0: {exc.message}")
        if scaled:
            out.print(f"StatefulSet {ns}/{name} scaled to 0 replicas.")
        elif scaled is False:
            out.print(f"No StatefulSet {ns}/{name}: no strategy pod to stop.")
        if write_error is not None or req is None:
            raise write_error or CliError("the halt request was not written", REFUSED)
    else:
        req = actions.submit(k, ns, name, verb, reason, by, severity=severity, force=force, target=target)
    out.print(
        f"{verb.value} request {req.id[:8]} written on {ns}/{name} "
        f"({contract.ANNOTATION_REQUEST}) by {by}: {reason!r}" + (f", lifting halt {req.target}" if req.target else "")
    )
    if no_wait:
        return
    with err.status(f"waiting for the operator to answer (up to {timeout:g}s)...") if err.is_terminal else _null():
        answer = actions.wait(k, ns, name, req, timeout)
    if answer.code == OK:
        out.print(Text.assemble(("Accepted", "bold green"), f": {answer.message}"))
        return
    message = answer.message
    if answer.code == NO_ANSWER and verb is Verb.HALT:
        if scaled:
            message += f". The StatefulSet {ns}/{name} was scaled to 0 anyway: the strategy is not trading"
        elif scaled is False:
            message += f". There is no StatefulSet {ns}/{name}: nothing was running"
        else:
            message += (
                f". Scaling StatefulSet {ns}/{name} to 0 FAILED too: scale it by hand"
                f" (kubectl scale sts {name} -n {ns} --replicas=0)"
            )
    raise CliError(message, answer.code)


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


_NAME = Annotated[str, typer.Argument(help="TradingStrategy name.", show_default=False)]


@app.command()
def promote(
    ctx: typer.Context, name: _NAME, reason: ReasonOpt,
    timeout: TimeoutOpt = 30.0, no_wait: NoWaitOpt = False, force: ForceOpt = False,
    namespace: NamespaceOpt = None, kubeconfig: KubeconfigOpt = None, context: ContextOpt = None,
) -> None:
    """Approve the current manual phase (its gates and minimum duration still apply)."""
    _act(ctx, Verb.PROMOTE, name, reason, namespace, kubeconfig, context, timeout, no_wait, force)


@app.command()
def pause(
    ctx: typer.Context, name: _NAME, reason: ReasonOpt,
    timeout: TimeoutOpt = 30.0, no_wait: NoWaitOpt = False, force: ForceOpt = False,
    namespace: NamespaceOpt = None, kubeconfig: KubeconfigOpt = None, context: ContextOpt = None,
) -> None:
    """Stop advancing (the strategy keeps trading at its current fraction)."""
    _act(ctx, Verb.PAUSE, name, reason, namespace, kubeconfig, context, timeout, no_wait, force)


@app.command()
def resume(
    ctx: typer.Context, name: _NAME, reason: ReasonOpt,
    timeout: TimeoutOpt = 30.0, no_wait: NoWaitOpt = False, force: ForceOpt = False,
    namespace: NamespaceOpt = None, kubeconfig: KubeconfigOpt = None, context: ContextOpt = None,
) -> None:
    """Continue a paused strategy."""
    _act(ctx, Verb.RESUME, name, reason, namespace, kubeconfig, context, timeout, no_wait, force)


@app.command()
def halt(
    ctx: typer.Context, name: _NAME, reason: ReasonOpt,
    timeout: TimeoutOpt = 30.0, no_wait: NoWaitOpt = False,
    namespace: NamespaceOpt = None, kubeconfig: KubeconfigOpt = None, context: ContextOpt = None,
) -> None:
    """Kill switch: stop trading now (also scales the StatefulSet to 0 directly)."""
    _act(ctx, Verb.HALT, name, reason, namespace, kubeconfig, context, timeout, no_wait)


@app.command()
def reset(
    ctx: typer.Context, name: _NAME, reason: ReasonOpt,
    timeout: TimeoutOpt = 30.0, no_wait: NoWaitOpt = False, force: ForceOpt = False,
    namespace: NamespaceOpt = None, kubeconfig: KubeconfigOpt = None, context: ContextOpt = None,
    halt_id: Annotated[
        Optional[str],
        typer.Option(
            "--halt",
            help="The halt it lifts (#17, or an emergency id); default: the newest, as `phasegate status` shows it.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Re-enable a halted strategy (never automatic). The reset names the halt it lifts, so a
    halt that came after you looked is never lifted by it."""
    _act(ctx, Verb.RESET, name, reason, namespace, kubeconfig, context, timeout, no_wait, force, target=halt_id)


@app.command()
def emergency(
    ctx: typer.Context, name: _NAME,
    severity: Annotated[
        SeverityChoice, typer.Option("--severity", "-s", help="critical also flattens all positions.", show_default=False)
    ],
    reason: ReasonOpt,
    timeout: TimeoutOpt = 30.0, no_wait: NoWaitOpt = False,
    namespace: NamespaceOpt = None, kubeconfig: KubeconfigOpt = None, context: ContextOpt = None,
) -> None:
    """Emergency stop: stop orders, cancel pending orders, and (critical) flatten."""
    _act(ctx, Verb.EMERGENCY, name, reason, namespace, kubeconfig, context, timeout, no_wait, severity=severity.value)


# --- operator and cluster set-up -----------------------------------------------------


@app.command()
def run(
    ctx: typer.Context,
    namespace: Annotated[
        Optional[str], typer.Option("--namespace", "-n", help="Watch only this namespace. Default: all.", show_default=False)
    ] = None,
    metrics_port: Annotated[int, typer.Option("--metrics-port", help="Port of the operator's /metrics.")] = 8080,
    liveness_port: Annotated[int, typer.Option("--liveness-port", help="Port of the liveness endpoint.")] = 8081,
    bind_address: Annotated[
        str, typer.Option("--bind-address", envvar="PHASEGATE_BIND_ADDRESS",
                          help="Address the metrics and liveness ports listen on (the chart's bindAddress).")
    ] = "0.0.0.0",
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
    leader_elect: Annotated[
        bool,
        typer.Option("--leader-elect/--no-leader-elect", envvar="PHASEGATE_LEADER_ELECT",
                     help="Act only while holding the leader Lease (run several replicas, one acts)."),
    ] = True,
    lease_duration: Annotated[
        float, typer.Option("--lease-duration", envvar="PHASEGATE_LEASE_DURATION", min=0,
                            help="Seconds a standby waits before taking a lease that is not renewed.")
    ] = 15.0,
    renew_deadline: Annotated[
        float, typer.Option("--renew-deadline", envvar="PHASEGATE_RENEW_DEADLINE", min=0,
                            help="Seconds without a successful renewal after which the leader stops acting "
                                 "(less than --lease-duration).")
    ] = 10.0,
    retry_period: Annotated[
        float, typer.Option("--retry-period", envvar="PHASEGATE_RETRY_PERIOD", min=0,
                            help="Seconds between attempts to acquire or renew the lease.")
    ] = 2.0,
    lease_name: Annotated[
        str, typer.Option("--lease-name", envvar="PHASEGATE_LEASE_NAME", help="Name of the leader Lease.")
    ] = "phasegate-leader",
    lease_namespace: Annotated[
        Optional[str],
        typer.Option("--lease-namespace", envvar="PHASEGATE_LEASE_NAMESPACE", show_default=False,
                     help="Namespace of the leader Lease. Default: $POD_NAMESPACE, else --namespace, else default."),
    ] = None,
    dead_holder_check: Annotated[
        bool,
        typer.Option("--lease-dead-holder-check/--no-lease-dead-holder-check", envvar="PHASEGATE_LEASE_DEAD_HOLDER_CHECK",
                     hidden=True, help="Take at once a lease whose holder is a dead process of this host."),
    ] = True,
    kube_qps: Annotated[
        float, typer.Option("--kube-qps", envvar="PHASEGATE_KUBE_QPS", min=0.1,
                            help="Client-side rate limit of API calls per second (halts are never held back).")
    ] = 100.0,
    kube_burst: Annotated[
        int, typer.Option("--kube-burst", envvar="PHASEGATE_KUBE_BURST", min=1, help="Burst of the client-side rate limit.")
    ] = 200,
    shards: Annotated[
        int, typer.Option("--shards", envvar="PHASEGATE_SHARDS", min=1,
                          help="Split the strategies into this many shards, each held by one replica through its own "
                               "Lease (every replica must use the same number). 1: one leader acts on all.")
    ] = 1,
    max_concurrent_evaluations: Annotated[
        int, typer.Option("--max-concurrent-evaluations", envvar="PHASEGATE_MAX_CONCURRENT_EVALUATIONS", min=1,
                          help="Interval evaluations (metrics reads) in flight at once; the rest queue, urgent passes do not.")
    ] = 256,
    halt_sentinel: Annotated[
        bool, typer.Option("--halt-sentinel/--no-halt-sentinel", envvar="PHASEGATE_HALT_SENTINEL",
                           help="A breaker condition someone writes stops the pod from a process of its own, "
                                "before the strategy's pass (which then writes the halt).")
    ] = True,
) -> None:
    """Run the operator against the current kubeconfig (KUBECONFIG / --kubeconfig, current context)."""
    g = ctx.find_root().obj or {}
    if g.get("context"):
        raise CliError(
            "run uses the kubeconfig's current context; switch it with `kubectl config use-context "
            f"{g['context']}` (or point KUBECONFIG at a file whose current context is the one you want)",
            REFUSED,
        )
    if g.get("kubeconfig"):
        os.environ["KUBECONFIG"] = os.path.expanduser(g["kubeconfig"])
    try:
        from phasegate.controller.main import run as run_operator
    except ImportError as exc:
        if (exc.name or "").startswith("phasegate.controller"):
            raise CliError(
                f"the operator is not part of this installation ({exc.name} is missing); "
                "install the full phasegate package",
                REFUSED,
            ) from exc
        raise
    if leader_elect and not lease_duration > renew_deadline > retry_period > 0:
        raise CliError(
            "leader election needs --lease-duration > --renew-deadline > --retry-period > 0 "
            f"(got {lease_duration:g} / {renew_deadline:g} / {retry_period:g})",
            REFUSED,
        )
    # The operator reads its leader-election settings from these (controller/main.py), as
    # it does when started by other means.
    os.environ.update({
        "PHASEGATE_LEADER_ELECT": "true" if leader_elect else "false",
        "PHASEGATE_LEASE_DURATION": repr(lease_duration),
        "PHASEGATE_RENEW_DEADLINE": repr(renew_deadline),
        "PHASEGATE_RETRY_PERIOD": repr(retry_period),
        "PHASEGATE_LEASE_NAME": lease_name,
        "PHASEGATE_LEASE_DEAD_HOLDER_CHECK": "true" if dead_holder_check else "false",
        "PHASEGATE_KUBE_QPS": repr(kube_qps),
        "PHASEGATE_KUBE_BURST": str(kube_burst),
        "PHASEGATE_MAX_CONCURRENT_EVALUATIONS": str(max_concurrent_evaluations),
        "PHASEGATE_SHARDS": str(shards),
        "PHASEGATE_HALT_SENTINEL": "true" if halt_sentinel else "false",
    })
    if lease_namespace:
        os.environ["PHASEGATE_LEASE_NAMESPACE"] = lease_namespace
    run_operator(
        namespace=namespace or g.get("namespace"),
        metrics_port=metrics_port,
        liveness_port=liveness_port,
        verbose=verbose,
        bind_address=bind_address,
    )


@app.command("install-crds")
def install_crds(
    ctx: typer.Context,
    file: Annotated[
        Optional[str],
        typer.Option("--file", "-f", help=f"CRD file. Default: crds/{crds.CRD_FILE} of the repository.", show_default=False),
    ] = None,
    timeout: Annotated[float, typer.Option("--timeout", min=0, help="Seconds to wait for Established.")] = 60.0,
    kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None,
) -> None:
    """Create or replace the TradingStrategy CRD, and wait until it is Established."""
    body, source = crds.load_crd(file)
    k, _ = _session(ctx, None, kubeconfig, context)
    action = crds.apply_crd(k, body)
    name = body["metadata"]["name"]
    crds.wait_established(k, name, timeout)
    _console().print(f"CRD {name} {action} from {source}; Established.")


@app.command()
def version() -> None:
    """The CLI version and the API it speaks."""
    _console().print(f"phasegate {phasegate.__version__} (API {contract.API_VERSION})")


if __name__ == "__main__":
    app()
