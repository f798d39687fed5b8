"""Running the demo strategy as a real process and reading its JSON log."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from phasegate.api import contract


def pod_env(tmp_path: Path, mode: str = "paper", **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PHASEGATE_")}
    env.update({
        contract.ENV_STRATEGY: "momentum",
        contract.ENV_PHASE: mode,
        contract.ENV_MODE: mode,
        contract.ENV_CAPITAL_FRACTION: "0.10" if mode == "live" else "0",
        contract.ENV_CAPITAL: "1000000",
        contract.ENV_CHECKPOINT_DIR: str(tmp_path / "checkpoints"),
        contract.ENV_METRICS_PORT: "0",
        contract.ENV_POD_IP: "127.0.0.1",
        contract.ENV_TERMINATION_MESSAGE_PATH: str(tmp_path / "termination-log"),
        "PYTHONUNBUFFERED": "1",
    })
    env.update(extra)
    return env


@dataclass
class DemoProcess:
    proc: subprocess.Popen
    lines: list[dict] = field(default_factory=list)
    raw: list[str] = field(default_factory=list)
    _queue: queue.Queue[str | None] = field(default_factory=queue.Queue)

    @classmethod
    def start(cls, env: dict[str, str], *args: str) -> DemoProcess:
        proc = subprocess.Popen(
            [sys.executable, "-m", "phasegate.sdk.demo", *args],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        demo = cls(proc)
        threading.Thread(target=demo._pump, daemon=True).start()
        return demo

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line)
        self._queue.put(None)

    def _take(self, timeout: float) -> bool:
        try:
            line = self._queue.get(timeout=timeout)
        except queue.Empty:
            return True
        if line is None:
            return False
        self.raw.append(line)
        try:
            self.lines.append(json.loads(line))
        except json.JSONDecodeError:
            pass
        return True

    def wait_for(self, predicate: Callable[[dict], bool], timeout: float = 30.0) -> dict:
        """The first log line matching `predicate`, reading the log as it is written."""
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for line in self.lines[seen:]:
                if predicate(line):
                    return line
            seen = len(self.lines)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no matching log line within {timeout}s; log:\n{''.join(self.raw[-40:])}")
            if not self._take(min(remaining, 0.5)) and self._queue.empty():
                raise AssertionError(f"process exited ({self.proc.poll()}) first; log:\n{''.join(self.raw[-40:])}")

    def event(self, name: str, timeout: float = 30.0, **fields) -> dict:
        return self.wait_for(lambda l: l.get("event") == name and all(l.get(k) == v for k, v in fields.items()),
                             timeout)

    def terminate(self, timeout: float = 30.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.finish(timeout)

    def finish(self, timeout: float = 30.0) -> int:
        code = self.proc.wait(timeout=timeout)
        while self._take(1.0):
            pass
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def events(self, name: str) -> list[dict]:
        return [l for l in self.lines if l.get("event") == name]


def run_demo(env: dict[str, str], *args: str, timeout: float = 60.0) -> tuple[int, list[dict], str]:
    done = subprocess.run([sys.executable, "-m", "phasegate.sdk.demo", *args], env=env, capture_output=True,
                          text=True, timeout=timeout)
    lines = []
    for line in done.stdout.splitlines():
        try:
            lines.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return done.returncode, lines, done.stderr
