from __future__ import annotations

import pytest

from .helpers import DemoProcess


@pytest.fixture
def demo_processes():
    started: list[DemoProcess] = []
    yield started
    for demo in started:
        demo.kill()
