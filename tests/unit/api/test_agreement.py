"""The model refuses what the CRD refuses (the apiserver side is proven against a real
apiserver in tests/e2e/test_validation_agreement.py): time zones, bounded durations, money,
JSON types, and the CEL rules' twins in the model."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from phasegate.api import StrategySpec, gen_timezones, parse_duration
from phasegate.api.crd import openapi_schema
from phasegate.api.durations import DURATION_BOUND_RULE, DURATION_PATTERN, MAX_DURATION
from phasegate.api.timezones import IANA_VERSION, TIME_ZONES
from phasegate.api.types import MONEY_PATTERN

BASE = {"capital": "1000000", "account": "DU1", "maxFraction": 0.1, "template": {"image": "x"}}


def refused(patch: dict, field: str, *words: str) -> str:
    with pytest.raises(ValidationError) as err:
        StrategySpec.model_validate({**BASE, **patch})
    text = str(err.value)
    assert field in text, text
    for w in words:
        assert w in text, text
    return text


def spec_schema() -> dict:
    return openapi_schema()["properties"]["spec"]


# --- time zones --------------------------------------------------------------------------


def test_time_zone_list_is_sorted_unique_and_loads():
    assert list(TIME_ZONES) == sorted(set(TIME_ZONES))
    assert "UTC" in TIME_ZONES and "America/New_York" in TIME_ZONES and "Factory" not in TIME_ZONES
    for name in TIME_ZONES:
        ZoneInfo(name)  # every accepted name works in the operator (tzdata is a dependency)


def test_committed_time_zone_list_is_what_the_pinned_tzdata_generates():
    import tzdata

    if tzdata.IANA_VERSION != IANA_VERSION:
        pytest.skip(f"tzdata {tzdata.IANA_VERSION} installed, list generated from {IANA_VERSION}")
    assert gen_timezones.TARGET.read_text() == gen_timezones.render(), "run `python -m phasegate.api.gen_timezones`"


def test_crd_enum_is_exactly_the_models_set():
    tz = spec_schema()["properties"]["tradingDay"]["properties"]["timeZone"]
    assert tz["enum"] == list(TIME_ZONES) and tz["type"] == "string"


@pytest.mark.parametrize(
    "zone", ["Mars/Olympus_Mons", "posix/UTC", "right/UTC", "localtime", "Factory", "utc", "", "America/../UTC"]
)
def test_names_outside_the_list_are_refused(zone):
    refused({"tradingDay": {"timeZone": zone}}, "timeZone", "America/New_York")


@pytest.mark.parametrize("zone", ["UTC", "America/New_York", "Asia/Kolkata", "US/Eastern", "EST5EDT", "Etc/GMT+5"])
def test_listed_names_are_accepted(zone):
    assert StrategySpec.model_validate({**BASE, "tradingDay": {"timeZone": zone}}).trading_day.time_zone == zone


# --- durations ---------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["1000000000d", "1000000s", "3651d", "522w", "3650d1ms", "999999w", "87601h"])
def test_durations_are_bounded(text):
    with pytest.raises(ValueError):
        parse_duration(text)
    refused({"terminationGracePeriod": text}, "terminationGracePeriod", "duration")


@pytest.mark.parametrize("text", ["3650d", "521w3d", "87600h", "999999ms", "0s", "1h30m", "500ms", "315360s"])
def test_durations_up_to_the_bound_are_accepted(text):
    assert parse_duration(text) <= MAX_DURATION
    StrategySpec.model_validate({**BASE, "terminationGracePeriod": text})


def test_the_bound_message_names_the_fix():
    text = refused({"analysis": {"interval": "3651d"}}, "interval", "3650d")
    assert "shorter" in text


def _cel_bound(text: str) -> bool:
    """DURATION_BOUND_RULE evaluated in Python (its unit table and limit read from the rule
    itself), to check that the CEL says what parse_duration says."""
    rule = DURATION_BOUND_RULE
    ms = {u: int(n) for u, n in re.findall(r"p\.endsWith\('(ms|s|m|h|d)'\) \? ([0-9]+)", rule)}
    ms["w"] = int(re.search(r": ([0-9]+)\)\)\.sum\(\)", rule).group(1))
    limit = int(rule.rsplit("<= ", 1)[1])
    total = 0
    for n, unit in re.findall(r"([0-9]+)(ms|s|m|h|d|w)", text):  # the rule's findAll
        total += int(n) * ms[unit]
    return total <= limit


@given(st.lists(st.tuples(st.integers(0, 999999), st.sampled_from(["ms", "s", "m", "h", "d", "w"])), min_size=1, max_size=4))
def test_cel_bound_agrees_with_the_model(parts):
    text = "".join(f"{n}{u}" for n, u in parts)
    assert re.fullmatch(DURATION_PATTERN, text)
    try:
        parse_duration(text)
        ok = True
    except ValueError:
        ok = False
    assert _cel_bound(text) == ok
    if ok:  # and an accepted duration never overflows the operator's arithmetic
        datetime(9000, 1, 1, tzinfo=UTC) + parse_duration(text)
        parse_duration(text) * 2 + timedelta(days=1)


# --- money, numbers, JSON types ----------------------------------------------------------


@pytest.mark.parametrize(
    "bad", ["1e6", "-0", "-5", " 100", "100 ", "1_000", "+5", ".5", "5.", "NaN", "Infinity", "1" * 41, 1000000, 2.5, True]
)
def test_money_takes_the_crds_pattern_only(bad):
    refused({"capital": bad}, "capital")


@pytest.mark.parametrize("good", ["0", "1000000", "2500.50", "007", "1" * 40])
def test_money_the_pattern_accepts(good):
    assert re.fullmatch(MONEY_PATTERN, good)
    assert StrategySpec.model_validate({**BASE, "capital": good}).capital == Decimal(good)


def test_money_from_python_stays_a_decimal_and_serialises_in_the_pattern():
    s = StrategySpec.model_validate({**BASE, "capital": Decimal("1E+6")})
    assert s.wire()["capital"] == "1000000" and re.fullmatch(MONEY_PATTERN, s.wire()["capital"])


@pytest.mark.parametrize(
    "patch, field",
    [
        ({"maxFraction": True}, "maxFraction"),
        ({"riskLimits": {"maxDrawdown": {"threshold": -0.1}}}, "threshold"),
        ({"riskLimits": {"maxDrawdown": {"threshold": False}}}, "threshold"),
        ({"phases": [{"name": "p", "mode": "paper", "gates": {"minSharpe": -1}}]}, "minSharpe"),
        ({"phases": [{"name": "p", "mode": "paper", "gates": {"minMonteCarloRuns": "10"}}]}, "minMonteCarloRuns"),
        ({"phases": [{"name": "p", "mode": "paper", "gates": {"minMonteCarloRuns": True}}]}, "minMonteCarloRuns"),
        ({"phases": [{"name": "p", "mode": "paper", "gates": {"noBreakerTrips": "yes"}}]}, "noBreakerTrips"),
        ({"phases": [{"name": "p", "mode": "paper", "gates": {"noCriticalIncident": 1}}]}, "noCriticalIncident"),
        ({"historyLimit": "50"}, "historyLimit"),
        ({"analysis": {"metricsFailure": {"pauseAfter": "3"}}}, "pauseAfter"),
    ],
)
def test_json_types_are_the_crds(patch, field):
    refused(patch, field)


def test_integral_floats_are_integers_as_for_the_apiserver():
    s = StrategySpec.model_validate({**BASE, "historyLimit": 60.0})
    assert s.history_limit == 60 and isinstance(s.history_limit, int)


# --- the CEL rules' twins ----------------------------------------------------------------


def test_pause_after_must_not_exceed_halt_after():
    refused({"analysis": {"metricsFailure": {"pauseAfter": 11, "haltAfter": 10}}}, "pauseAfter", "haltAfter")
    refused({"analysis": {"metricsFailure": {"pauseAfter": 11}}}, "pauseAfter")  # haltAfter's default is 10
    StrategySpec.model_validate({**BASE, "analysis": {"metricsFailure": {"pauseAfter": 10, "haltAfter": 10}}})
    rules = spec_schema()["properties"]["analysis"]["properties"]["metricsFailure"]["x-kubernetes-validations"]
    assert [r["rule"] for r in rules] == ["self.pauseAfter <= self.haltAfter"]


def test_prometheus_source_needs_its_address_in_the_model_too():
    refused({"analysis": {"source": "prometheus"}}, "prometheus", "address")
    StrategySpec.model_validate({**BASE, "analysis": {"source": "prometheus", "prometheus": {"address": "http://p:9090"}}})


def test_the_shipped_strategies_stay_valid():
    from pathlib import Path

    root = Path(__file__).resolve().parents[3] / "strategies"
    docs = [d for f in sorted(root.glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d]
    specs = [d["spec"] for d in docs if d.get("kind") == "TradingStrategy"]
    assert specs
    for spec in specs:
        StrategySpec.model_validate(spec)


# --- as the apiserver reads a manifest -----------------------------------------------------


def test_a_null_field_is_absent_and_takes_its_default():
    s = StrategySpec.model_validate({**BASE, "tradingDay": {"timeZone": None}, "historyLimit": None,
                                     "phases": [{"name": "p", "mode": "paper", "fraction": None}]})
    assert s.trading_day.time_zone == "UTC" and s.history_limit == 50 and s.phases[0].fraction == 0
    refused({"capital": None}, "capital")  # required: null is missing, as for the apiserver


def test_an_unknown_field_is_refused_even_when_null():
    refused({"bogus": None}, "bogus")


def test_a_manifest_uses_the_wire_names_only():
    refused({"history_limit": 60}, "history_limit")
    refused({"phases": [{"name": "p", "mode": "paper", "min_duration": "1d"}]}, "min_duration")
    # Python callers keep the Python names
    assert StrategySpec(**{k: v for k, v in StrategySpec.model_validate(BASE)}).history_limit == 50


def test_null_values_of_a_string_map_are_dropped():
    s = StrategySpec.model_validate({**BASE, "template": {"image": "x", "nodeSelector": {"a": None, "b": "c"}}})
    assert s.template.node_selector == {"b": "c"}


@pytest.mark.parametrize("value, ok", [(2**63 - 1, True), (2**63, False), (1e18, True), (1e19, False), (3.0, True),
                                       (3.5, False)])
def test_integers_are_int64_as_for_the_apiserver(value, ok):
    patch = {"phases": [{"name": "p", "mode": "paper", "gates": {"minMonteCarloRuns": value}}]}
    if ok:
        StrategySpec.model_validate({**BASE, **patch})
    else:
        refused(patch, "minMonteCarloRuns")


def test_metrics_failure_counts_are_refused_as_floats_since_the_cel_rule_cannot_read_them():
    refused({"analysis": {"metricsFailure": {"haltAfter": 10.0}}}, "haltAfter", "whole number")


def test_reserved_env_names_are_refused_by_the_model_too():
    refused({"template": {"image": "x", "env": [{"name": "PHASEGATE_MODE", "value": "live"}]}}, "env", "PHASEGATE_")


@pytest.mark.parametrize("patch", [{"template": {"image": "x", "resources": {"limits": {"cpu": 10**400}}}},
                                   {"template": {"image": "x", "tolerations": [{"tolerationSeconds": float("inf")}]}},
                                   {"riskLimits": {"maxDrawdown": {"threshold": 10**400}}}])
def test_a_number_the_apiserver_cannot_decode_is_refused_anywhere(patch):
    refused(patch, "out of range")
