"""The reconnect backoff rule: only a connection that stayed up resets the delays."""

from __future__ import annotations

import pytest

from drivers.backoff import Backoff, ReconnectBackoff


def _ceilings(stable_s: float = 10.0) -> ReconnectBackoff:
    # random() == 1.0: every delay is its un-jittered ceiling
    return ReconnectBackoff(Backoff(base_s=0.1, factor=2.0, cap_s=5.0, random=lambda: 1.0),
                            stable_s=stable_s)  # fmt: skip


def test_failed_attempts_grow_to_the_cap() -> None:
    delays = _ceilings()
    got = [delays.next_delay(None) for _ in range(9)]
    assert got == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0])


def test_connections_that_drop_within_seconds_make_the_delay_grow() -> None:
    # Two daemons taking one client id from each other: each connection lasts ~0.1 s.
    delays = _ceilings()
    got = [delays.next_delay(0.13) for _ in range(8)]
    assert got == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0])
    assert delays.next_delay(9.9) == pytest.approx(5.0)  # still not a stable connection


def test_a_connection_that_stayed_up_starts_the_delays_over() -> None:
    delays = _ceilings()
    for _ in range(5):
        delays.next_delay(None)
    assert delays.next_delay(10.0) == pytest.approx(0.1)
    assert delays.next_delay(None) == pytest.approx(0.2)
    assert delays.next_delay(3600.0) == pytest.approx(0.1)


def test_the_delays_are_jittered_within_half_to_all_of_the_ceiling() -> None:
    low = ReconnectBackoff(Backoff(base_s=0.1, factor=2.0, cap_s=5.0, random=lambda: 0.0))
    high = _ceilings()
    for _ in range(10):
        floor, ceiling = low.next_delay(0.5), high.next_delay(0.5)
        assert floor == pytest.approx(ceiling / 2)
    assert ceiling == pytest.approx(5.0)
    real = ReconnectBackoff(Backoff(base_s=0.1, factor=2.0, cap_s=5.0))
    for attempt in range(12):
        ceiling = real.backoff.ceiling(attempt)
        assert ceiling / 2 <= real.next_delay(1.0) <= ceiling


def test_stable_s_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="stable_s"):
        ReconnectBackoff(Backoff(), stable_s=-1.0)
