"""PHASEGATE_EVENT_LOOP picks the operator's event loop: uvloop when installed, unless told."""

from __future__ import annotations

import asyncio
import builtins
from typing import Any

import pytest

from phasegate.controller.main import event_loop_factory


def test_uvloop_by_default_and_the_standard_loop_on_request() -> None:
    uvloop = pytest.importorskip("uvloop")
    assert event_loop_factory("") is uvloop.new_event_loop
    assert event_loop_factory("UVLoop ") is uvloop.new_event_loop
    assert event_loop_factory("asyncio") is None
    loop = event_loop_factory("")()  # type: ignore[misc]
    try:
        assert loop.run_until_complete(asyncio.sleep(0, "ran")) == "ran"
    finally:
        loop.close()


def test_a_wrong_value_names_the_setting_and_the_choices() -> None:
    with pytest.raises(SystemExit, match="PHASEGATE_EVENT_LOOP='tokio'.*asyncio or uvloop"):
        event_loop_factory("tokio")


def test_without_uvloop_the_standard_loop_unless_uvloop_was_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    real = builtins.__import__

    def no_uvloop(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "uvloop":
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_uvloop)
    assert event_loop_factory("") is None
    with pytest.raises(SystemExit, match="uvloop is not installed"):
        event_loop_factory("uvloop")
