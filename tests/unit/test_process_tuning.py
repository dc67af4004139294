"""Process-wide tuning of `s2-feature run` (`service/process.py`)."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

from s2feature.service.process import SWITCH_INTERVAL_S, short_switch_interval


@pytest.fixture
def restored_switch_interval() -> Iterator[None]:
    before = sys.getswitchinterval()
    yield
    sys.setswitchinterval(before)


@pytest.mark.usefixtures("restored_switch_interval")
def test_the_loop_waits_at_most_a_millisecond_for_another_threads_turn() -> None:
    sys.setswitchinterval(0.005)  # CPython's default
    short_switch_interval()
    assert sys.getswitchinterval() == pytest.approx(SWITCH_INTERVAL_S)
    assert pytest.approx(0.001) == SWITCH_INTERVAL_S
