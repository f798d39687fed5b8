"""The strategies of `make bench-scale`: one HTTP server answering for every kwok pod.

Pods on the kwok nodes are Running with an address in the kwok pod range (loopback,
127.x) but run nothing. This server listens on 0.0.0.0:<port>, so a connection to any of
those addresses reaches it, and it tells the pods apart by the local address of the
accepted connection (the pod IP the operator dialled). For each pod it serves the
strategy metrics of the contract (phasegate.api.contract) with healthy values, and it
records the time of every scrape.

It runs as its own process (`python -m benchmarks.scale_server --port 0`, the chosen
port is the first line on stdout) so that the benchmark's own work never delays an
answer or a timestamp. Control endpoints, on the same port:

  GET  /bench/healthz                     "ok"
  POST /bench/set {"ip": ..., "portfolio_value": "85000"}   serve that value to that pod
                                          from now on (null: back to healthy); the reply
                                          carries the server's monotonic time of the switch
  GET  /bench/scrapes                     {"now": t, "scrapes": {ip: [t, ...]}} (CLOCK_MONOTONIC)

Times are time.monotonic(), which on Linux is CLOCK_MONOTONIC, the same clock in every
process of the host: the benchmark compares them with its own.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import time
from typing import Any

from aiohttp import web

from phasegate.api import contract

LATENCY_BUCKETS = ("0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1.0", "2.5", "5.0", "10.0", "+Inf")
ORDER_LATENCY = 0.1  # s, in the 0.1 bucket
ORDERS_PER_SECOND = 1.0  # 60/min: trading, well inside the default 120/min order-rate limit


def exposition(portfolio_value: float, cash: float, orders: int, created: float) -> str:
    """A healthy strategy's metrics, as tests/support/fake_strategy.py exports them;
    `created` is the epoch time the counters started (the strategy process's start)."""
    gauges = (
        (contract.M_PORTFOLIO_VALUE, portfolio_value),
        (contract.M_CASH, cash),
        (contract.M_LARGEST_POSITION_FRACTION, 0.02),
        (contract.M_SIGNAL_ALIGNMENT, 0.99),
        (contract.M_EXECUTION_QUALITY, 0.95),
        (contract.M_POSITION_DISCREPANCY, 0.0),
        (contract.M_SLIPPAGE_BPS, 2.0),
    )
    lines = []
    for name, value in gauges:
        lines += [f"# TYPE {name} gauge", f"{name} {value!r}"]
    for name, value in ((contract.M_ORDERS_SUBMITTED, orders), (contract.M_ORDERS_FILLED, orders), (contract.M_ERRORS, 0)):
        lines += [f"# TYPE {name} counter", f"{name} {float(value)!r}"]
        base = name.removesuffix("_total")
        lines += [f"# TYPE {base}_created gauge", f"{base}_created {created!r}"]
    lines.append(f"# TYPE {contract.M_BREAKER_TRIPS} counter")
    h = contract.M_ORDER_LATENCY
    lines.append(f"# TYPE {h} histogram")
    for le in LATENCY_BUCKETS:
        n = orders if le == "+Inf" or float(le) >= ORDER_LATENCY else 0
        lines.append(f'{h}_bucket{{le="{le}"}} {float(n)!r}')
    lines += [f"{h}_count {float(orders)!r}", f"{h}_sum {orders * ORDER_LATENCY!r}"]
    return "\n".join(lines) + "\n"


class Book:
    def __init__(self, capital: float) -> None:
        self.capital = capital
        self.started = time.monotonic()
        self.created = time.time()
        self.portfolio: dict[str, float] = {}  # pod IP -> value served instead of the capital
        self.scrapes: dict[str, list[float]] = {}

    def metrics(self, ip: str, now: float) -> str:
        self.scrapes.setdefault(ip, []).append(now)
        orders = int((now - self.started) * ORDERS_PER_SECOND)
        value = self.portfolio.get(ip, self.capital)
        return exposition(value, self.capital / 2, orders, self.created)


def make_app(book: Book) -> web.Application:
    async def metrics(request: web.Request) -> web.Response:
        now = time.monotonic()
        sock = request.transport.get_extra_info("sockname") if request.transport else None
        ip = sock[0] if sock else "?"
        return web.Response(text=book.metrics(ip, now), content_type="text/plain", charset="utf-8",
                            headers={"X-Content-Type-Options": "nosniff"})

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def set_value(request: web.Request) -> web.Response:
        body: dict[str, Any] = await request.json()
        ip = body["ip"]
        value = body.get("portfolio_value")
        if value is None:
            book.portfolio.pop(ip, None)
        else:
            book.portfolio[ip] = float(value)
        return web.json_response({"ip": ip, "portfolio_value": value, "at": time.monotonic()})

    async def scrapes(_: web.Request) -> web.Response:
        return web.json_response({"now": time.monotonic(), "scrapes": book.scrapes})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/bench/healthz", healthz)
    app.router.add_post("/bench/set", set_value)
    app.router.add_get("/bench/scrapes", scrapes)
    return app


async def serve(port: int, capital: float) -> None:
    # One listening socket on every address: the kwok pod IPs are all loopback.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("0.0.0.0", port))
    sock.listen(4096)
    runner = web.AppRunner(make_app(Book(capital)), access_log=None, handle_signals=True)
    await runner.setup()
    await web.SockSite(runner, sock, backlog=4096).start()
    print(json.dumps({"port": sock.getsockname()[1]}), flush=True)
    await asyncio.Event().wait()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, default=0, help="0: a free port (printed on stdout)")
    ap.add_argument("--capital", type=float, required=True, help="capital of the strategies' rung: the healthy portfolio value")
    args = ap.parse_args()
    try:
        asyncio.run(serve(args.port, args.capital))
    except (KeyboardInterrupt, web.GracefulExit):
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
