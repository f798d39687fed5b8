"""`phasegate run`: the operator process."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional

import aiohttp
import kopf
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

import phasegate
from phasegate.api import StrategySpec
from phasegate.api.spec import MetricsSourceType
from phasegate.metrics import make_source
from phasegate.metrics.httpclient import HttpClient

from . import census, collector, handlers, leader, lean_bodies, priority, telemetry
from .election_thread import ElectionThread
from .fresh import FreshBodies
from .kube import Kube, RateLimiter, close_client, load_client, no_env_lookups
from .reconcile import Reconciler
from .sentinel_process import SentinelProcess, no_election
from .shards import LeaseDirectory, ShardElection, conflicting, shard_of

_state: dict[str, Any] = {}


@dataclass(frozen=True)
class LeaderOptions:
    """`phasegate run`'s leader-election flags (controller-runtime's defaults)."""

    enabled: bool = True
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0
    lease_name: str = leader.LEASE_NAME
    lease_namespace: Optional[str] = None  # default: POD_NAMESPACE, else the watched namespace, else default
    identity: Optional[str] = None  # default: POD_NAME, else hostname_pid
    dead_holder_check: bool = True

    @classmethod
    def from_env(cls, env: Optional[dict[str, str]] = None) -> LeaderOptions:
        """PHASEGATE_LEADER_ELECT, PHASEGATE_LEASE_{DURATION,NAME,NAMESPACE,DEAD_HOLDER_CHECK},
        PHASEGATE_RENEW_DEADLINE, PHASEGATE_RETRY_PERIOD (`phasegate run` sets them from its flags)."""
        e = os.environ if env is None else env

        def flag(key: str, default: bool) -> bool:
            raw = e.get(key, "").strip().lower()
            return default if not raw else raw in ("1", "true", "yes", "on")

        def seconds(key: str, default: float) -> float:
            raw = e.get(key, "").strip()
            return float(raw) if raw else default

        return cls(
            enabled=flag("PHASEGATE_LEADER_ELECT", True),
            lease_duration=seconds("PHASEGATE_LEASE_DURATION", cls.lease_duration),
            renew_deadline=seconds("PHASEGATE_RENEW_DEADLINE", cls.renew_deadline),
            retry_period=seconds("PHASEGATE_RETRY_PERIOD", cls.retry_period),
            lease_name=e.get("PHASEGATE_LEASE_NAME") or leader.LEASE_NAME,
            lease_namespace=e.get("PHASEGATE_LEASE_NAMESPACE") or None,
            dead_holder_check=flag("PHASEGATE_LEASE_DEAD_HOLDER_CHECK", True),
        )

    def settings(self, watched: Optional[str]) -> leader.ElectionSettings:
        return leader.ElectionSettings(
            identity=self.identity or leader.default_identity(),
            namespace=self.lease_namespace or leader.default_namespace(watched),
            name=self.lease_name,
            lease_duration=self.lease_duration,
            renew_deadline=self.renew_deadline,
            retry_period=self.retry_period,
            dead_holder_check=self.dead_holder_check,
        )


class SpecDiffBase(kopf.AnnotationsDiffBaseStorage):
    """kopf's diff base, built without deep-copying the status it then throws away: kopf
    builds one on every event of every strategy, and the status is most of the object."""

    def build(self, *, body: Any, extra_fields: Any = None) -> Any:
        if extra_fields:  # a handler on a status field would need it: kopf's own way
            return super().build(body=body, extra_fields=extra_fields)
        return super().build(body=kopf.Body({k: v for k, v in body.items() if k != "status"}))


def _settings(settings: kopf.OperatorSettings) -> None:
    # Handler progress and diff-base in annotations: our status belongs to us alone.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="kopf.phasegate.dev")
    settings.persistence.diffbase_storage = SpecDiffBase(prefix="kopf.phasegate.dev")
    settings.persistence.finalizer = "phasegate.dev/kopf-finalizer"
    # Watches behind load balancers used to freeze silently: bookmarks plus a bound.
    settings.watching.inactivity_timeout = 70.0
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 5.0
    settings.posting.level = 100  # our own Events carry the history; kopf's would double them
    settings.networking.request_timeout = 30.0


async def _metrics_app(port: int, host: str = "0.0.0.0") -> web.AppRunner:
    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(telemetry.REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    @web.middleware
    async def alerts_unfenced(request: web.Request, handler: Any) -> Any:
        # The Alertmanager receiver records a firing alert in status (resourceVersion-guarded,
        # as a person could): any replica may do that; the leader acts on it.
        if request.path.startswith("/alertmanager/"):
            with leader.unfenced():
                return await handler(request)
        return await handler(request)

    app = web.Application(middlewares=[alerts_unfenced])
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    try:
        from .alerts import add_routes  # the Alertmanager receiver

        add_routes(app, token=os.environ.get("PHASEGATE_ALERTMANAGER_TOKEN", ""))
    except ImportError:
        pass
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner


def _fence(elector: leader.LeaderElector, log: Any) -> Any:
    def fence(op: str, target: str) -> None:
        try:
            elector.check(op, target)
        except leader.NotLeading:
            telemetry.FENCED_WRITES.labels(op).inc()
            log.warning("write refused: not leading", op=op, object=target)
            raise

    return fence


def _shard_count() -> int:
    return max(1, int(os.environ.get("PHASEGATE_SHARDS") or 1))


async def _build_elector(api: Any, election: leader.ElectionSettings) -> Any:
    """The elector (one lease, or N shard leases), built on the election thread with its client."""
    no_env_lookups(api)
    api.user_agent = f"phasegate@{election.identity}/{phasegate.__version__}"
    log = telemetry.log_for("-", "-").bind(identity=election.identity)
    shards = _shard_count()
    if shards > 1:
        return ShardElection(api, election, shards, fingerprint=leader.process_fingerprint(), log=log)
    directory = LeaseDirectory(api, election.namespace, election.renew_deadline)

    async def no_sharded_replica() -> bool:
        # An unsharded leader never acts beside replicas that split the strategies.
        try:
            others = conflicting(await directory.live(), 1)
        except Exception:  # cannot tell: take the lease as before sharding existed
            return True
        if others:
            log.error("not taking the leader lease: sharded replicas are live", replicas=others[:5])
        return not others

    store = leader.KubeLeaseStore(api, election.namespace, election.name, timeout=election.renew_deadline)
    return leader.LeaderElector(store, election, fingerprint=leader.process_fingerprint(), log=log,
                                may_acquire=no_sharded_replica)


async def _start_election(election: leader.ElectionSettings) -> Any:
    """Leases are renewed on their own thread (controller/election_thread.py): a loop busy with
    thousands of evaluations never makes a renewal late."""
    thread = ElectionThread(lambda api: _build_elector(api, election), load_client, close_client)
    elector = await thread.start()
    _state["election_thread"] = thread
    if isinstance(elector, ShardElection):
        shards = elector.shards
        handlers.LEADING = elector.leading_for
        handlers.SHARD_OF = lambda namespace, name: shard_of(namespace, name, shards)
        telemetry.SHARDS_HELD.labels(election.identity).set_function(lambda: float(len(elector.held())))
    else:
        handlers.LEADING = lambda namespace="", name="": elector.leading()
    elector.on_started.append(thread.on_loop(asyncio.get_running_loop(), handlers.wake_all))
    telemetry.LEADER.labels(election.identity).set_function(lambda: 1.0 if elector.leading() else 0.0)
    if not elector.leading():
        telemetry.log_for("-", "-").info("standing by", identity=election.identity, holder=elector.holder or None,
                                         lease=f"{election.namespace}/{election.name}")
    return elector


def _release_on_signal(loop: asyncio.AbstractEventLoop) -> None:
    """SIGTERM (a pod deleted, a rollout) hands the lease over first, then stops the operator.

    kopf's own shutdown cancels every watcher and daemon before the cleanup handlers run, and
    that took seconds under load: a lease released only in cleanup was often released too late,
    and a standby waited out the whole lease (or the pod that replaced the leader took it).
    Released at the signal, the standby leads within one retry period, and this process has
    stopped acting before that (`release()` fences first). kopf is then stopped through its
    stop flag. These handlers replace kopf's: they are installed after kopf's (this runs in a
    startup handler, after the election thread's first network round trip)."""
    stop: Optional[asyncio.Event] = _state.get("stop_flag")
    if stop is None or not hasattr(loop, "add_signal_handler"):
        return  # not run by `run()` (tests embedding the operator): kopf's handlers stay

    def on_signal(sig: signal.Signals) -> None:
        if _state.get("stopping") is not None:
            stop.set()  # a second signal: stop now, the release goes on or has failed
            return
        telemetry.log_for("-", "-").info("signal received: releasing the lease, then stopping", signal=sig.name)
        _state["stopping"] = asyncio.ensure_future(_release_then_stop(stop))

    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, on_signal, sig)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread
            return


async def _stop_sentinel() -> None:
    sentinel = _state.pop("sentinel", None)
    if sentinel is not None:
        await sentinel.astop()


async def _release_then_stop(stop: asyncio.Event) -> None:
    thread = _state.pop("election_thread", None)
    try:
        await _stop_sentinel()  # it acts by the leases: it ends before they are handed over
        if thread is not None:
            await thread.stop(timeout=5.0)
    finally:
        stop.set()


def halt_sentinel_enabled(raw: Optional[str] = None) -> bool:
    """PHASEGATE_HALT_SENTINEL: `true` (the default) or `false` (halts then wait for the strategy's pass)."""
    raw = (raw if raw is not None else os.environ.get("PHASEGATE_HALT_SENTINEL", "")).strip().lower()
    if raw in ("", "true", "1", "yes", "on"):
        return True
    if raw in ("false", "0", "no", "off"):
        return False
    raise SystemExit(f"PHASEGATE_HALT_SENTINEL={raw!r}: set it to true or false, or leave it unset (true)")


def _limiter() -> RateLimiter:
    return RateLimiter(qps=float(os.environ.get("PHASEGATE_KUBE_QPS") or 100.0),
                       burst=int(os.environ.get("PHASEGATE_KUBE_BURST") or 200))


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    _settings(settings)
    api = await load_client()
    no_env_lookups(api)
    limiter = _limiter()
    handlers.EVALUATION_SLOTS = asyncio.Semaphore(int(os.environ.get("PHASEGATE_MAX_CONCURRENT_EVALUATIONS") or 256))
    election: Optional[leader.ElectionSettings] = _state.get("election")
    elector: Optional[leader.LeaderElector] = None
    if election is not None:
        # The apiserver names the writer of each field after the user agent (managedFields):
        # which replica wrote what stays visible.
        api.user_agent = f"phasegate@{election.identity}/{phasegate.__version__}"
        elector = await _start_election(election)
        _release_on_signal(asyncio.get_running_loop())
        kube = Kube(api, fence=_fence(elector, telemetry.log_for("-", "-").bind(identity=election.identity)),
                    limiter=limiter)
    else:
        kube = Kube(api, limiter=limiter)
        handlers.LEADING = handlers.always_leading
    _state["elector"] = elector
    sources: dict[str, Any] = {}
    # Keep-alive connections for every scrape (a new TCP connection per read was a tenth of
    # the operator's CPU at a thousand strategies), over a client lighter than aiohttp's
    # (metrics/httpclient.py); Prometheus queries share one aiohttp session.
    scrapes = HttpClient(idle_timeout=60.0)
    queries = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=75.0), trust_env=False)
    _state["scrapes"], _state["queries"] = scrapes, queries

    def source_for(spec: StrategySpec):
        key = "scrape" if spec.analysis.source == MetricsSourceType.SCRAPE else spec.analysis.model_dump_json()
        if key not in sources:
            sources[key] = make_source(spec, session=queries, client=scrapes)
        return sources[key]

    identity = election.identity if election is not None else leader.default_identity()
    handlers.RECONCILER = Reconciler(kube, source_for, identity=identity)
    handlers.FRESH = FreshBodies(kube)
    if halt_sentinel_enabled():
        deadlines = elector.acting_until if elector is not None else no_election()
        sentinel = SentinelProcess(namespace=_state.get("namespace"), identity=identity, deadlines=deadlines,
                                   verbose=bool(_state.get("verbose")))
        sentinel.start()
        _state["sentinel"] = sentinel
        handlers.SENTINEL_STOPPED = handlers.RECONCILER.sentinel_stopped = sentinel.stopped_at
    _state["api"] = api
    # After the sentinel's supervisor and the election thread have started, which keep the
    # priority the operator was started with (controller/priority.py).
    niceness = priority.lower_this_thread(priority.loop_niceness())
    if _state.get("metrics_port"):
        _state["runner"] = await _metrics_app(_state["metrics_port"], _state.get("bind_address") or "0.0.0.0")
    # What start-up made (modules, clients, models) lives as long as the process: out of the
    # collector's sight at once; what the strategies make follows (controller/collector.py).
    gc.freeze()
    census.install(asyncio.get_running_loop(), telemetry.log_for("-", "-"))
    _state["collector"] = asyncio.create_task(
        collector.keep_collections_short(full_every=collector.full_every_from_env()), name="phasegate gc freezer")
    telemetry.log_for("-", "-").info(
        "operator started", metrics_port=_state.get("metrics_port"),
        identity=election.identity if election else None, leading=elector.leading() if elector else True,
        shards=_shard_count() if election else 1, tick_grid_s=handlers.TICK_GRID, loop_niceness=niceness,
    )


@kopf.on.probe(id="leader")
def leader_probe(**_: Any) -> dict[str, Any]:
    elector: Any = _state.get("elector")
    if elector is None:
        return {"leading": True, "election": False}
    out = {"leading": elector.leading(), "identity": elector.identity, "holder": elector.holder}
    if isinstance(elector, ShardElection):
        out["shards"] = {"count": elector.shards, "held": elector.held()}
    return out


@kopf.on.probe(id="watchdog")
def watchdog_probe(**_: Any) -> str:
    """Liveness fails when the leader has a strategy not evaluated for 3 of its intervals
    (a stuck loop guards nothing). A standby evaluates nothing, so it is never stale."""
    elector: Any = _state.get("elector")
    if elector is not None and not elector.leading():
        return "standby"
    if isinstance(elector, ShardElection):
        since = elector.since_for
    else:
        started = elector.leading_since if elector is not None else 0.0

        def since(namespace: str, name: str) -> Optional[float]:
            return started
    stale = handlers.stale_loops(since)
    if stale:
        telemetry.log_for("-", "-").error("watchdog: evaluations are late", late=stale)
        raise kopf.PermanentError("evaluations are late: " + "; ".join(stale[:5]))
    return "ok"


@kopf.on.cleanup()
async def cleanup(**_: Any) -> None:
    freezer = _state.pop("collector", None)
    if freezer is not None:
        freezer.cancel()
    await _stop_sentinel()
    thread = _state.pop("election_thread", None)
    _state.pop("elector", None)
    if thread is not None:
        await thread.stop()  # stops acting first, then hands the lease to a standby
    runner = _state.pop("runner", None)
    if runner is not None:
        await runner.cleanup()
    api = _state.pop("api", None)
    if api is not None:
        await api.close()
    for held in ("scrapes", "queries"):
        client = _state.pop(held, None)
        if client is not None:
            await client.close()


def run(
    namespace: Optional[str] = None,
    metrics_port: int = 8080,
    liveness_port: int = 8081,
    verbose: bool = False,
    leader_election: Optional[LeaderOptions] = None,
    bind_address: str = "0.0.0.0",
) -> None:
    telemetry.configure_logging(verbose)
    census.start_tracing()
    telemetry.watch_gc()
    _state["metrics_port"] = metrics_port
    _state["verbose"] = verbose
    _state["namespace"] = namespace
    halt_sentinel_enabled()  # a bad setting stops the operator before kopf starts
    _state["bind_address"] = bind_address
    options = leader_election or LeaderOptions.from_env()
    _state["election"] = options.settings(namespace) if options.enabled else None
    kwargs: dict[str, Any] = {"standalone": True}
    if namespace:
        kwargs["namespaces"] = [namespace]
    else:
        kwargs["clusterwide"] = True
    if liveness_port:
        host = f"[{bind_address}]" if ":" in bind_address else bind_address
        kwargs["liveness_endpoint"] = f"http://{host}:{liveness_port}/healthz"
    if not lean_bodies.install(own_echo=handlers.own_echo, standing_by=handlers.standing_by):
        telemetry.log_for("-", "-").warning("kopf's event processor not found: bodies are kept with their managedFields")
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        runner.run(_operate(kwargs))


def event_loop_factory(choice: Optional[str] = None) -> Optional[Callable[[], asyncio.AbstractEventLoop]]:
    """PHASEGATE_EVENT_LOOP: `asyncio` (the standard loop, the default) or `uvloop`. uvloop
    measured less CPU and memory at 1,000 strategies but halts no faster, their p99 as far as
    2.4 and 3.5 times the floor client's against 1.8 and 2.4 on the standard loop (two runs of
    each): halts come first, so it is a choice, not the default."""
    choice = (choice if choice is not None else os.environ.get("PHASEGATE_EVENT_LOOP", "")).strip().lower()
    if choice not in ("", "asyncio", "uvloop"):
        raise SystemExit(f"PHASEGATE_EVENT_LOOP={choice!r}: set it to asyncio or uvloop, or leave it unset")
    if choice in ("", "asyncio"):
        return None
    try:
        import uvloop
    except ImportError:
        raise SystemExit("PHASEGATE_EVENT_LOOP=uvloop: uvloop is not installed (pip install uvloop)") from None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


async def _operate(kwargs: dict[str, Any]) -> None:
    _state["stop_flag"] = asyncio.Event()
    await kopf.operator(stop_flag=_state["stop_flag"], **kwargs)
