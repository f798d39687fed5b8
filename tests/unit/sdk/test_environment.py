"""The runtime refuses to start on a missing or inconsistent pod environment, saying why and how to fix it."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from phasegate.api import contract
from phasegate.sdk.environment import ConfigError, RunMode, load_config

from .helpers import pod_env, run_demo


def base(tmp_path: Path, **overrides: str) -> dict[str, str]:
    env = {
        contract.ENV_STRATEGY: "momentum",
        contract.ENV_PHASE: "live-10",
        contract.ENV_MODE: "live",
        contract.ENV_CAPITAL_FRACTION: "0.10",
        contract.ENV_CAPITAL: "100000",
        contract.ENV_SHADOW: "true",
        contract.ENV_CHECKPOINT_DIR: str(tmp_path / "ck"),
    }
    env.update(overrides)
    return {k: v for k, v in env.items() if v is not None}


def problems(env: dict[str, str]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(env)
    return info.value.problems


def test_a_complete_environment_is_read(tmp_path):
    config = load_config(base(tmp_path, **{contract.ENV_POD_IP: "127.0.0.5", contract.ENV_METRICS_PORT: "9200"}))
    assert config.mode is RunMode.LIVE
    assert config.capital == Decimal("100000") and config.capital_fraction == Decimal("0.10")
    assert config.shadow is True and config.book == "live"
    assert config.bind_address == "127.0.0.5" and config.metrics_port == 9200
    assert config.termination_message_path == Path(contract.DEFAULT_TERMINATION_MESSAGE_PATH)
    assert (tmp_path / "ck").is_dir()


def test_defaults_bind_everywhere_on_the_default_port(tmp_path):
    config = load_config(base(tmp_path))
    assert config.bind_address == "0.0.0.0"
    assert config.metrics_port == contract.DEFAULT_METRICS_PORT


@pytest.mark.parametrize(
    "overrides, variable, hint",
    [
        ({contract.ENV_STRATEGY: None}, contract.ENV_STRATEGY, "TradingStrategy's name"),
        ({contract.ENV_PHASE: None}, contract.ENV_PHASE, "phase's name"),
        ({contract.ENV_MODE: None}, contract.ENV_MODE, "backtest, paper, shadow, live, flatten"),
        ({contract.ENV_MODE: "production"}, contract.ENV_MODE, "not a known mode"),
        ({contract.ENV_CAPITAL: None}, contract.ENV_CAPITAL, "decimal amount"),
        ({contract.ENV_CAPITAL: "1,000,000"}, contract.ENV_CAPITAL, "not a decimal number"),
        ({contract.ENV_CAPITAL: "$100"}, contract.ENV_CAPITAL, "without separators or currency"),
        ({contract.ENV_CAPITAL: "NaN"}, contract.ENV_CAPITAL, "not a decimal number"),
        ({contract.ENV_CAPITAL: "0"}, contract.ENV_CAPITAL, "must be > 0"),
        ({contract.ENV_CAPITAL_FRACTION: None}, contract.ENV_CAPITAL_FRACTION, "0.10"),
        ({contract.ENV_CAPITAL_FRACTION: "10%"}, contract.ENV_CAPITAL_FRACTION, "not a decimal number"),
        ({contract.ENV_CAPITAL_FRACTION: "1.5"}, contract.ENV_CAPITAL_FRACTION, "outside [0, 1]"),
        ({contract.ENV_CAPITAL_FRACTION: "0"}, contract.ENV_CAPITAL_FRACTION, "live phase needs a fraction > 0"),
        ({contract.ENV_MODE: "paper", contract.ENV_SHADOW: None}, contract.ENV_CAPITAL_FRACTION, "must be 0"),
        ({contract.ENV_MODE: "shadow", contract.ENV_CAPITAL_FRACTION: "0", contract.ENV_SHADOW: "false"},
         contract.ENV_SHADOW, "contradict"),
        ({contract.ENV_SHADOW: "yes"}, contract.ENV_SHADOW, "true or false"),
        ({contract.ENV_CHECKPOINT_DIR: "relative/dir"}, contract.ENV_CHECKPOINT_DIR, "absolute path"),
        ({contract.ENV_METRICS_PORT: "http"}, contract.ENV_METRICS_PORT, "not a TCP port"),
        ({contract.ENV_METRICS_PORT: "70000"}, contract.ENV_METRICS_PORT, "not a TCP port"),
        ({contract.ENV_POD_IP: "localhost:80"}, contract.ENV_POD_IP, "not an IP address"),
    ],
)
def test_each_problem_names_the_variable_and_the_fix(tmp_path, overrides, variable, hint):
    found = problems(base(tmp_path, **overrides))
    assert len(found) == 1, found
    assert found[0].startswith(variable) or variable in found[0]
    assert hint in found[0]


def test_every_problem_is_reported_at_once(tmp_path):
    found = problems({contract.ENV_MODE: "live", contract.ENV_CAPITAL: "lots", contract.ENV_CAPITAL_FRACTION: "0"})
    text = "\n".join(found)
    for variable in (contract.ENV_STRATEGY, contract.ENV_PHASE, contract.ENV_CAPITAL, contract.ENV_CAPITAL_FRACTION):
        assert variable in text


def test_an_unwritable_checkpoint_dir_is_refused(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    found = problems(base(tmp_path, **{contract.ENV_CHECKPOINT_DIR: str(blocker / "ck")}))
    assert contract.ENV_CHECKPOINT_DIR in found[0] and "writable volume" in found[0]


def test_flatten_needs_neither_capital_nor_fraction(tmp_path):
    config = load_config(base(tmp_path, **{contract.ENV_MODE: "flatten", contract.ENV_CAPITAL: None,
                                           contract.ENV_CAPITAL_FRACTION: None, contract.ENV_SHADOW: None}))
    assert config.mode is RunMode.FLATTEN


def test_backtest_does_not_touch_the_checkpoint_dir(tmp_path):
    target = tmp_path / "never-created"
    load_config(base(tmp_path, **{contract.ENV_MODE: "backtest", contract.ENV_CAPITAL_FRACTION: "0",
                                  contract.ENV_SHADOW: None, contract.ENV_CHECKPOINT_DIR: str(target)}))
    assert not target.exists()


def test_the_demo_exits_2_with_the_message_on_stderr_and_in_the_termination_log(tmp_path):
    env = pod_env(tmp_path, mode="live", **{contract.ENV_CAPITAL_FRACTION: "0", contract.ENV_CAPITAL: "abc"})
    code, lines, stderr = run_demo(env)
    assert code == 2
    assert "refuses to start" in stderr
    assert f"{contract.ENV_CAPITAL}='abc' is not a decimal number" in stderr
    assert "live phase needs a fraction > 0" in stderr
    assert [l["event"] for l in lines] == ["runtime.config_invalid"]
    assert (tmp_path / "termination-log").read_text() in stderr


def test_the_demo_refuses_a_bad_demo_flag(tmp_path):
    code, _, stderr = run_demo(pod_env(tmp_path), "--bar-seconds", "0")
    assert code == 2 and "--bar-seconds" in stderr and "must be > 0" in stderr
