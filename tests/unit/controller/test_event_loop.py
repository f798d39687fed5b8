"""PHASEGATE_EVENT_LOOP picks the operator's event loop: the standard one unless uvloop is asked for."""

from __future__ import annotations

import asyncio
import builtins
from typing import Any

import pytest
import uvloop

from phasegate.controller.main import event_loop_factory


def test_the_standard_loop_by_default_and_uvloop_on_request() -> None:
    assert event_loop_factory("") is None
    assert event_loop_factory("asyncio") is None
    assert event_loop_factory("UVLoop ") is uvloop.new_event_loop
    loop = event_loop_factory("uvloop")()  # type: ignore[misc]
    try:
        assert loop.run_until_complete(asyncio.sleep(0, "ran")) == "ran"
    finally:
        loop.close()


def test_a_wrong_value_names_the_setting_and_the_choices() -> None:
    with pytest.raises(SystemExit, match="PHASEGATE_EVENT_LOOP='tokio'.*asyncio or uvloop"):
        event_loop_factory("tokio")


def test_uvloop_asked_for_but_not_installed_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    real = builtins.__import__

    def no_uvloop(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "uvloop":
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_uvloop)
    assert event_loop_factory("") is None
    with pytest.raises(SystemExit, match="uvloop is not installed"):
        event_loop_factory("uvloop")
