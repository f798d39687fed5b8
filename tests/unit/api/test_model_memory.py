"""Parsed models share what is the same across strategies (controller memory at scale), and
the sharing never lets one instance's bookkeeping leak into another's."""

from __future__ import annotations

import sys

import pytest
from pydantic import ValidationError

from phasegate.api import StrategySpec
from phasegate.api.spec import ApiModel
from phasegate.api.status import Condition, StrategyStatus

BASE = {"capital": "1000000", "account": "DU1", "maxFraction": 0.1, "template": {"image": "x"}}
COND = {"type": "Ready", "status": "True", "reason": "Evaluated", "message": "m",
        "lastTransitionTime": "2026-12-01T00:00:00Z"}


def test_instances_given_the_same_fields_share_one_field_set():
    a, b = StrategySpec.model_validate(BASE), StrategySpec.model_validate({**BASE, "account": "DU2"})
    assert a.__pydantic_fields_set__ is b.__pydantic_fields_set__
    assert a.phases[0].__pydantic_fields_set__ is b.phases[0].__pydantic_fields_set__
    other = StrategySpec.model_validate({**BASE, "paperCapital": "5"})
    assert other.model_fields_set == a.model_fields_set | {"paper_capital"}


def test_a_copy_with_updates_does_not_touch_the_set_it_shared():
    a, b = Condition.model_validate(COND), Condition.model_validate({**COND, "message": "n"})
    before = set(a.model_fields_set)
    c = a.model_copy(update={"observed_generation": 3})
    assert "observed_generation" in c.model_fields_set
    assert a.model_fields_set == before == b.model_fields_set
    assert c.__pydantic_fields_set__ is not a.__pydantic_fields_set__


def test_models_stay_frozen_so_no_assignment_can_add_to_a_shared_set():
    a = Condition.model_validate(COND)
    with pytest.raises(ValidationError):
        a.message = "changed"  # type: ignore[misc]
    status = StrategyStatus.model_validate({"phase": "paper", "conditions": [COND]})
    with pytest.raises(ValidationError):
        status.phase = "live-10"  # type: ignore[misc]


class Editable(ApiModel):
    model_config = {"frozen": False}
    a: int = 0
    b: int = 0


def test_a_model_that_is_not_frozen_keeps_its_own_field_set():
    x, y = Editable.model_validate({"a": 1}), Editable.model_validate({"a": 2})
    assert x.__pydantic_fields_set__ is not y.__pydantic_fields_set__
    x.b = 3
    assert x.model_fields_set == {"a", "b"} and y.model_fields_set == {"a"}


def test_short_strings_from_separate_decodes_are_one_object():
    # Built at run time, as a JSON decode makes them: equal, not identical.
    reason = "".join(["Eval", "uated"])
    a = Condition.model_validate({**COND, "reason": reason})
    b = Condition.model_validate({**COND, "reason": "".join(["Evalu", "ated"])})
    assert a.reason is b.reason is sys.intern("Evaluated")
    long = "x" * 200
    c = Condition.model_validate({**COND, "message": "".join([long[:100], long[100:]])})
    assert c.message == long  # long strings are kept as they came
