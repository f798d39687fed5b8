"""The halt sentinel's process, and the operator's side of it.

The operator starts the sentinel (controller/sentinel.py) as a child process,
`python -m phasegate.controller.sentinel_process`, and talks to it through two pipes of
plain text lines:

- operator -> sentinel: `until <d0> <d1> ...`, for each shard the monotonic time until which
  this replica acts on it (the election's own deadline: `LeaderElector.acting_until`; `inf`
  without an election, 0 for a shard it does not hold). The sentinel acts on a strategy only
  while the clock is before its shard's deadline, so a deadline it has not been told of yet
  (a renewal) only makes it act less, never more. The operator sends it five times a second.
  CLOCK_MONOTONIC is the host's, the same in both processes.
- sentinel -> operator: `stopped <namespace> <name> <resourceVersion>` written before each
  scale-down is sent (the guard's record: the operator reads the pipe, without waiting,
  before each of its own checks, so a pass that starts after the sentinel's write always
  sees it), `gone <namespace> <name>` for a deleted strategy, and `count <result>` for the
  operator's counters (the sentinel's process has no metrics endpoint of its own).

The sentinel ends when the operator does: its end of the operator's pipe then reads end of
file. The operator starts it again, one second later, whenever it ends unasked; meanwhile
halts take the strategy's own pass, as without a sentinel (`phasegate_sentinel_up` 0).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Optional

import phasegate

from . import telemetry
from .kube import close_client, load_client, no_env_lookups
from .sentinel import Key, Sentinel, count_here
from .shards import shard_of

MODULE = "phasegate.controller.sentinel_process"


# ---------------------------------------------------------------- the lines on the pipes

def until_line(deadlines: Sequence[float]) -> bytes:
    return ("until " + " ".join(repr(float(d)) for d in deadlines) + "\n").encode()


def stopped_line(key: Key, rv: Optional[str]) -> bytes:
    ns, name = key
    return (f"stopped {ns} {name} {rv}\n" if rv is not None else f"gone {ns} {name}\n").encode()


def count_line(result: str) -> bytes:
    return f"count {result}\n".encode()


class Lines:
    """Complete lines out of a byte stream read in pieces."""

    def __init__(self) -> None:
        self._rest = b""

    def feed(self, data: bytes) -> list[list[str]]:
        self._rest += data
        *done, self._rest = self._rest.split(b"\n")
        return [line.decode("utf-8", "replace").split() for line in done if line.strip()]


def acts(deadlines: Sequence[float], namespace: str, name: str, now: float) -> bool:
    """Whether the replica that sent `deadlines` acts on the strategy at monotonic time `now`."""
    if not deadlines:
        return False
    return now < deadlines[shard_of(namespace, name, len(deadlines))]


# ---------------------------------------------------------------- the sentinel's side

class ParentLink:
    """The sentinel process's end of the two pipes."""

    def __init__(self, read_fd: int, write_fd: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.read_fd, self.write_fd = read_fd, write_fd
        self.deadlines: list[float] = []
        self.gone = asyncio.Event()
        self._lines = Lines()
        self._clock = clock

    def on_readable(self) -> None:
        try:
            data = os.read(self.read_fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:  # the operator is gone: so is this process
            self.gone.set()
            return
        for words in self._lines.feed(data):
            if words[0] == "until":
                try:
                    self.deadlines = [float(w) for w in words[1:]]
                except ValueError:
                    self.deadlines = []  # unreadable: act on nothing until the next line

    def leading(self, namespace: str, name: str) -> bool:
        return acts(self.deadlines, namespace, name, self._clock())

    def _send(self, data: bytes) -> None:
        try:
            os.write(self.write_fd, data)  # a line is well under PIPE_BUF: written whole
        except BrokenPipeError:
            # The operator is gone, and with it the guard this record is for: no write follows.
            raise SystemExit(0) from None

    def record(self, key: Key, rv: Optional[str]) -> None:
        self._send(stopped_line(key, rv))

    def count(self, result: str) -> None:
        self._send(count_line(result))


async def _sentinel_client(identity: str) -> Any:
    api = await load_client()
    no_env_lookups(api)
    api.user_agent = f"phasegate-sentinel@{identity}/{phasegate.__version__}"
    return api


async def serve_child(read_fd: int, write_fd: int, namespace: Optional[str], identity: str) -> None:
    link = ParentLink(read_fd, write_fd)
    os.set_blocking(read_fd, False)
    loop = asyncio.get_running_loop()
    loop.add_reader(read_fd, link.on_readable)
    sentinel = Sentinel(lambda: _sentinel_client(identity), close_client, namespace=namespace, leading=link.leading,
                        record=link.record, count=link.count)
    gc.freeze()  # what start-up made lives as long as the process
    watching = asyncio.create_task(sentinel.serve(), name="phasegate halt sentinel")
    gone = asyncio.create_task(link.gone.wait())
    await asyncio.wait([watching, gone], return_when=asyncio.FIRST_COMPLETED)
    watching.cancel()
    if watching.done() and not watching.cancelled() and watching.exception() is not None:
        raise watching.exception()  # type: ignore[misc]  # the operator logs the exit and starts another


def child_main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog=MODULE)
    parser.add_argument("--read-fd", type=int, required=True)
    parser.add_argument("--write-fd", type=int, required=True)
    parser.add_argument("--namespace", default=None)
    parser.add_argument("--identity", default="-")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    # Ctrl-C at a terminal reaches the whole process group: the operator stops, and this
    # process with it when its pipe closes.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    telemetry.configure_logging(args.verbose)
    asyncio.run(serve_child(args.read_fd, args.write_fd, args.namespace, args.identity))


# ---------------------------------------------------------------- the operator's side

class SentinelProcess:
    """Starts the sentinel's process, keeps it running, and reads what it sends.

    `deadlines()` is the election's (controller/main.py); `stopped_at(namespace, name)` is the
    guard's reader (handlers.readable, Reconciler._actuate): it reads the pipe first, so any
    record the sentinel wrote before its scale-down is seen."""

    def __init__(self, *, namespace: Optional[str], identity: str, deadlines: Callable[[], Sequence[float]],
                 env: Optional[dict[str, str]] = None, verbose: bool = False, push_every: float = 0.2,
                 restart_after: float = 1.0) -> None:
        self.namespace, self.identity = namespace, identity
        self.deadlines = deadlines
        self.env, self.verbose = env, verbose
        self.push_every, self.restart_after = push_every, restart_after
        self.stopped: dict[Key, str] = {}
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self._to: Optional[int] = None
        self._from: Optional[int] = None
        self._lines = Lines()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self.thread = threading.Thread(target=self._supervise, name="phasegate-sentinel-supervisor", daemon=True)
        self.log = telemetry.log_for("-", "-")

    # -- what the operator's loop calls

    def stopped_at(self, namespace: str, name: str) -> Optional[str]:
        """The resourceVersion the sentinel stopped the strategy's pod at, if it did."""
        self.drain()
        return self.stopped.get((namespace, name))

    def start(self) -> None:
        with self._lock:
            try:
                self._spawn()
            except OSError as exc:  # the supervisor tries again; halts take the pass meanwhile
                self.log.error("halt sentinel: cannot start its process", error=str(exc)[:300])
        self.thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """End the sentinel's process (the operator stops, or hands its leases over)."""
        self._stopping.set()
        if self.thread.is_alive() and threading.current_thread() is not self.thread:
            self.thread.join(timeout)
        with self._lock:
            self._end(timeout)

    async def astop(self, timeout: float = 5.0) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.stop, timeout)

    # -- the pipes

    def drain(self) -> None:
        with self._lock:
            fd = self._from
            if fd is None:
                return
            while True:
                try:
                    data = os.read(fd, 65536)
                except BlockingIOError:
                    return
                except OSError:
                    data = b""
                if not data:
                    return  # its end closed: the supervisor sees the exit
                for words in self._lines.feed(data):
                    self._apply(words)

    def _apply(self, words: list[str]) -> None:
        if words[0] == "stopped" and len(words) == 4:
            self.stopped[(words[1], words[2])] = words[3]
        elif words[0] == "gone" and len(words) == 3:
            self.stopped.pop((words[1], words[2]), None)
        elif words[0] == "count" and len(words) == 2:
            count_here(words[1])

    def push(self) -> None:
        with self._lock:
            self._push_locked()

    def _push_locked(self) -> None:
        if self._to is None:
            return
        try:
            os.write(self._to, until_line(self.deadlines()))
        except (BlockingIOError, BrokenPipeError):
            pass  # not read (yet) or gone: its deadlines run out, it acts less, and the exit is seen

    # -- the process

    def _spawn(self) -> None:
        to_r, to_w = os.pipe()
        from_r, from_w = os.pipe()
        argv = [sys.executable, "-m", MODULE, "--read-fd", str(to_r), "--write-fd", str(from_w),
                "--identity", self.identity]
        if self.namespace:
            argv += ["--namespace", self.namespace]
        if self.verbose:
            argv.append("--verbose")
        env = {**os.environ, **(self.env or {})}
        try:
            self.proc = subprocess.Popen(argv, pass_fds=(to_r, from_w), env=env, stdin=subprocess.DEVNULL)
        except BaseException:
            os.close(to_w)
            os.close(from_r)
            raise
        finally:
            os.close(to_r)
            os.close(from_w)
        os.set_blocking(to_w, False)
        os.set_blocking(from_r, False)
        self._to, self._from, self._lines = to_w, from_r, Lines()
        self._push_locked()
        telemetry.SENTINEL_UP.set(1)
        self.log.info("halt sentinel: process started", pid=self.proc.pid)

    def _end(self, timeout: float) -> None:
        proc, self.proc = self.proc, None
        for fd in (self._to, self._from):
            if fd is not None:
                os.close(fd)
        self._to = self._from = None
        telemetry.SENTINEL_UP.set(0)
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def _supervise(self) -> None:
        while not self._stopping.wait(self.push_every):
            self.drain()
            proc = self.proc
            if proc is not None and proc.poll() is None:
                self.push()
                continue
            if proc is not None:
                with self._lock:
                    if self._stopping.is_set():
                        return
                    self._end(0.0)
                telemetry.SENTINEL_PROCESS_RESTARTS.inc()
                self.log.error("halt sentinel: its process ended; halts take the strategy's pass until it is back",
                               returncode=proc.returncode)
            if self._stopping.wait(self.restart_after):
                return
            with self._lock:
                if self._stopping.is_set():
                    return
                try:
                    self._spawn()
                except OSError as exc:
                    self.log.error("halt sentinel: cannot start its process", error=str(exc)[:300])


def no_election() -> Callable[[], list[float]]:
    """The deadlines of a replica that acts on everything, always (one shard)."""
    return lambda: [math.inf]


__all__ = ["Lines", "ParentLink", "SentinelProcess", "acts", "child_main", "count_line", "no_election",
           "stopped_line", "until_line"]


if __name__ == "__main__":
    child_main()
