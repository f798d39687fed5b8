"""The strategy pod's environment contract (docs/architecture.md), read and checked once at start.

A strategy that starts with the wrong mode or capital trades the wrong amount of money,
so every problem is reported at once, each naming the variable and how to fix it, and
the process refuses to start.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from enum import Enum
from pathlib import Path

from phasegate.api import contract, parse_duration

from .money import D


class RunMode(str, Enum):
    BACKTEST = "backtest"
    PAPER = "paper"
    SHADOW = "shadow"
    LIVE = "live"
    FLATTEN = "flatten"

    @property
    def trades(self) -> bool:
        return self in (RunMode.PAPER, RunMode.SHADOW, RunMode.LIVE)

    @property
    def book(self) -> str:
        """Which book the mode trades: paper money never mixes with live capital."""
        return "live" if self is RunMode.LIVE else "paper"


MODES = ", ".join(m.value for m in RunMode)


class ConfigError(Exception):
    """The environment cannot be run; `problems` holds one line per variable."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(self.render())

    def render(self) -> str:
        lines = ["phasegate strategy refuses to start: the pod environment is not valid"]
        lines += [f"  - {p}" for p in self.problems]
        lines.append(
            "  (the operator sets these variables from the TradingStrategy; when running by hand, "
            "export them yourself)"
        )
        return "\n".join(lines)


@dataclass(frozen=True)
class RuntimeConfig:
    strategy: str
    phase: str
    mode: RunMode
    capital_fraction: Decimal
    capital: Decimal
    shadow: bool
    checkpoint_dir: Path
    metrics_port: int
    bind_address: str
    termination_message_path: Path
    account: str | None = None
    """The broker account name (PHASEGATE_ACCOUNT), logged only: the paper broker has no accounts."""
    supervision_timeout: timedelta | None = None
    """PHASEGATE_SUPERVISION_TIMEOUT: supervised scrapes are expected from the start (sdk/supervision.py)."""

    @property
    def book(self) -> str:
        return self.mode.book


def load_config(environ: Mapping[str, str] | None = None) -> RuntimeConfig:
    """Read the contract from `environ` (default os.environ); raise ConfigError listing every problem."""
    env = dict(os.environ if environ is None else environ)
    problems: list[str] = []

    def text(name: str) -> str | None:
        value = env.get(name)
        if value is None or value.strip() == "":
            return None
        return value.strip()

    strategy = text(contract.ENV_STRATEGY)
    if strategy is None:
        problems.append(
            f"{contract.ENV_STRATEGY} is not set: set it to the TradingStrategy's name, "
            f"e.g. {contract.ENV_STRATEGY}=momentum"
        )
    elif "/" in strategy or strategy.startswith("."):
        problems.append(
            f"{contract.ENV_STRATEGY}={strategy!r} is not a plain name: it names the checkpoint file, "
            "so use the TradingStrategy's metadata.name (letters, digits, '-')"
        )

    phase = text(contract.ENV_PHASE)
    if phase is None:
        problems.append(
            f"{contract.ENV_PHASE} is not set: set it to the current phase's name, e.g. {contract.ENV_PHASE}=paper"
        )

    mode: RunMode | None = None
    raw_mode = text(contract.ENV_MODE)
    if raw_mode is None:
        problems.append(f"{contract.ENV_MODE} is not set: set it to one of {MODES}")
    else:
        try:
            mode = RunMode(raw_mode)
        except ValueError:
            problems.append(f"{contract.ENV_MODE}={raw_mode!r} is not a known mode: use one of {MODES}")

    fraction: Decimal | None = None
    raw_fraction = text(contract.ENV_CAPITAL_FRACTION)
    if raw_fraction is None:
        if mode is not RunMode.FLATTEN:
            problems.append(
                f"{contract.ENV_CAPITAL_FRACTION} is not set: set it to the phase's capital fraction, "
                f"0 for backtest, paper and shadow, e.g. {contract.ENV_CAPITAL_FRACTION}=0.10 for a 10% live rung"
            )
    else:
        try:
            fraction = D(raw_fraction)
        except ValueError:
            problems.append(
                f"{contract.ENV_CAPITAL_FRACTION}={raw_fraction!r} is not a decimal number: write a fraction "
                f"such as 0.10 for 10%"
            )
        else:
            if not (Decimal(0) <= fraction <= Decimal(1)):
                problems.append(
                    f"{contract.ENV_CAPITAL_FRACTION}={raw_fraction} is outside [0, 1]: write a fraction "
                    "such as 0.10 for 10%"
                )
                fraction = None

    capital: Decimal | None = None
    raw_capital = text(contract.ENV_CAPITAL)
    if raw_capital is None:
        if mode is not RunMode.FLATTEN:
            problems.append(
                f"{contract.ENV_CAPITAL} is not set: set it to the capital this phase may use, a decimal "
                f"amount such as {contract.ENV_CAPITAL}=1000000"
            )
    else:
        try:
            capital = D(raw_capital)
        except ValueError:
            problems.append(
                f"{contract.ENV_CAPITAL}={raw_capital!r} is not a decimal number: write the amount without "
                f"separators or currency, e.g. {contract.ENV_CAPITAL}=1000000 or 2500.50"
            )
        else:
            if capital <= 0 and mode is not RunMode.FLATTEN:
                problems.append(
                    f"{contract.ENV_CAPITAL}={raw_capital} must be > 0: a strategy cannot size positions "
                    "without capital"
                )

    if mode is RunMode.LIVE and fraction is not None and fraction <= 0:
        problems.append(
            f"{contract.ENV_MODE}=live with {contract.ENV_CAPITAL_FRACTION}={raw_fraction}: a live phase "
            "needs a fraction > 0; use mode paper or shadow to trade without capital at risk"
        )
    if mode in (RunMode.BACKTEST, RunMode.PAPER, RunMode.SHADOW) and fraction is not None and fraction > 0:
        problems.append(
            f"{contract.ENV_MODE}={mode.value} with {contract.ENV_CAPITAL_FRACTION}={raw_fraction}: "
            f"{mode.value} puts no capital at risk, so its fraction must be 0; use mode live for a capital rung"
        )

    shadow = mode is RunMode.SHADOW
    raw_shadow = text(contract.ENV_SHADOW)
    if raw_shadow is not None:
        if raw_shadow.lower() not in ("true", "false"):
            problems.append(f"{contract.ENV_SHADOW}={raw_shadow!r} must be true or false")
        else:
            shadow = raw_shadow.lower() == "true"
            if mode is RunMode.SHADOW and not shadow:
                problems.append(
                    f"{contract.ENV_MODE}=shadow with {contract.ENV_SHADOW}=false contradict each other: "
                    f"set {contract.ENV_SHADOW}=true (or leave it unset) for a shadow phase"
                )

    checkpoint_dir = Path(text(contract.ENV_CHECKPOINT_DIR) or contract.DEFAULT_CHECKPOINT_DIR)
    if not checkpoint_dir.is_absolute():
        problems.append(
            f"{contract.ENV_CHECKPOINT_DIR}={str(checkpoint_dir)!r} must be an absolute path, "
            "e.g. /var/lib/phasegate/checkpoints"
        )
    elif mode is not None and mode is not RunMode.BACKTEST:
        problem = _check_writable_dir(checkpoint_dir)
        if problem:
            problems.append(f"{contract.ENV_CHECKPOINT_DIR}={checkpoint_dir}: {problem}")

    port = contract.DEFAULT_METRICS_PORT
    raw_port = text(contract.ENV_METRICS_PORT)
    if raw_port is not None:
        # 0 asks the OS for a free port (tests); the runtime logs the one it got.
        if not raw_port.isdigit() or not (0 <= int(raw_port) <= 65535):
            problems.append(
                f"{contract.ENV_METRICS_PORT}={raw_port!r} is not a TCP port: use a number in 1..65535, "
                f"default {contract.DEFAULT_METRICS_PORT}"
            )
        else:
            port = int(raw_port)

    bind = "0.0.0.0"
    raw_ip = text(contract.ENV_POD_IP)
    if raw_ip is not None:
        try:
            ipaddress.ip_address(raw_ip)
            bind = raw_ip
        except ValueError:
            problems.append(
                f"{contract.ENV_POD_IP}={raw_ip!r} is not an IP address: set it from the downward API "
                "(fieldRef status.podIP) or leave it unset to listen on all addresses"
            )

    termination = Path(text(contract.ENV_TERMINATION_MESSAGE_PATH) or contract.DEFAULT_TERMINATION_MESSAGE_PATH)

    supervision: timedelta | None = None
    raw_supervision = text(contract.ENV_SUPERVISION_TIMEOUT)
    if raw_supervision is not None:
        try:
            supervision = parse_duration(raw_supervision)
        except ValueError as exc:
            problems.append(f"{contract.ENV_SUPERVISION_TIMEOUT}={raw_supervision!r}: {exc}; the operator sets it "
                            "from spec.supervision.timeout (unset it to run without supervision)")
        else:
            if supervision <= timedelta(0):
                problems.append(f"{contract.ENV_SUPERVISION_TIMEOUT}={raw_supervision!r} must be more than 0s, "
                                "e.g. 90s (unset it to run without supervision)")
                supervision = None

    if problems:
        raise ConfigError(problems)
    assert strategy and phase and mode is not None
    return RuntimeConfig(
        strategy=strategy,
        phase=phase,
        mode=mode,
        capital_fraction=fraction if fraction is not None else Decimal(0),
        capital=capital if capital is not None else Decimal(0),
        shadow=shadow,
        checkpoint_dir=checkpoint_dir,
        metrics_port=port,
        bind_address=bind,
        termination_message_path=termination,
        account=text(contract.ENV_ACCOUNT),
        supervision_timeout=supervision,
    )


def termination_path_from_env(environ: Mapping[str, str] | None = None) -> Path:
    """Where to report, usable even when the rest of the environment is broken."""
    env = os.environ if environ is None else environ
    raw = (env.get(contract.ENV_TERMINATION_MESSAGE_PATH) or "").strip()
    return Path(raw or contract.DEFAULT_TERMINATION_MESSAGE_PATH)


def _check_writable_dir(path: Path) -> str | None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"cannot create the directory ({exc.strerror}): mount a writable volume there"
    if not os.access(path, os.W_OK | os.X_OK):
        return "the directory is not writable: mount a writable volume there (checkpoints need it)"
    return None
