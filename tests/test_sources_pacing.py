"""The realtime clock of ``realtime: true`` files, driven with plain numbers (no sleeps)."""

from __future__ import annotations

import pytest

from daemon.sources.pacing import RealtimeClock


def run(clock: RealtimeClock, pts: list[float | None], start: float = 100.0) -> list[tuple[float, float | None]]:
    """Release every frame at its due time (as the source does); returns (due, discontinuity)."""
    now, out = start, []
    for p in pts:
        r = clock.schedule(now, p)
        assert 0.0 <= r.delay <= clock.max_gap
        now = max(now, r.due)
        out.append((r.due, r.discontinuity))
    return out


def test_frames_are_due_at_their_own_timestamps() -> None:
    c = RealtimeClock(25.0, max_gap=10.0)
    got = run(c, [5.0, 5.04, 5.08, 6.0])
    assert [d for d, _ in got] == pytest.approx([100.0, 100.04, 100.08, 101.0])
    assert all(x is None for _, x in got)


def test_slow_pacing_below_max_gap_is_honoured() -> None:
    """A timelapse file, one frame every 15 s, with stall_timeout (= max_gap) 40."""
    c = RealtimeClock(1 / 15, max_gap=40.0)
    got = run(c, [0.0, 15.0, 30.0])
    assert [d for d, _ in got] == pytest.approx([100.0, 115.0, 130.0])


@pytest.mark.parametrize("jump", [3 * 3600.0, 10.001, 1e9])
def test_forward_jump_beyond_max_gap_is_released_after_one_period_and_resynced(jump: float) -> None:
    c = RealtimeClock(25.0, max_gap=10.0)
    got = run(c, [0.0, 0.04, 0.04 + jump, 0.08 + jump, 0.12 + jump])
    dues = [d for d, _ in got]
    assert dues == pytest.approx([100.0, 100.04, 100.08, 100.12, 100.16])
    assert [x for _, x in got] == [None, None, pytest.approx(jump), None, None]


def test_backward_jump_is_a_discontinuity_and_not_a_burst() -> None:
    c = RealtimeClock(25.0, max_gap=10.0)
    got = run(c, [3600.0, 3600.04, 0.0, 0.04, 0.08])
    assert [d for d, _ in got] == pytest.approx([100.0, 100.04, 100.08, 100.12, 100.16])
    assert got[2][1] == pytest.approx(-3600.04)


def test_missing_or_repeated_timestamps_fall_back_to_the_nominal_period() -> None:
    c = RealtimeClock(10.0, max_gap=10.0)
    got = run(c, [1.0, None, None, 1.3, 1.3, 1.5])
    assert [d for d, _ in got] == pytest.approx([100.0, 100.1, 100.2, 100.3, 100.4, 100.6])
    assert all(x is None for _, x in got)  # small irregularities are not counted as jumps


def test_a_consumer_far_behind_resyncs_to_now_instead_of_bursting() -> None:
    c = RealtimeClock(25.0, max_gap=2.0)
    c.schedule(100.0, 0.0)
    r = c.schedule(160.0, 0.04)  # the process was suspended for a minute
    assert r.resynced_late and r.due == 160.0 and r.delay == 0.0
    r = c.schedule(160.0, 0.08)
    assert r.due == pytest.approx(160.04) and not r.resynced_late
    # Slightly late (within max_gap) catches up without a resync.
    r = c.schedule(161.0, 0.12)
    assert r.due == pytest.approx(160.08) and r.delay == 0.0 and not r.resynced_late


def test_loop_restart_continues_one_period_after_the_last_frame() -> None:
    c = RealtimeClock(25.0, max_gap=10.0)
    run(c, [0.0, 0.04, 0.08])
    c.reset()
    r = c.schedule(100.08, 0.0)
    assert r.due == pytest.approx(100.12) and r.discontinuity is None


def test_the_wait_is_never_longer_than_max_gap_whatever_the_timestamps() -> None:
    import random

    rng = random.Random(7)
    c = RealtimeClock(30.0, max_gap=3.0)
    now = 0.0
    for _ in range(2000):
        pts = rng.choice([None, rng.uniform(-1e6, 1e6), now + rng.uniform(-5, 5)])
        r = c.schedule(now, pts)
        assert 0.0 <= r.delay <= 3.0
        now = r.due + rng.choice([0.0, 0.01, 5.0])


@pytest.mark.parametrize("bad", [0.0, -1.0, float("inf"), float("nan")])
def test_max_gap_must_be_positive_and_finite(bad: float) -> None:
    with pytest.raises(ValueError, match="max_gap"):
        RealtimeClock(25.0, max_gap=bad)


def test_rate_fallback() -> None:
    assert RealtimeClock(0.0, 1.0).period == pytest.approx(0.04)
    assert RealtimeClock(float("nan"), 1.0).period == pytest.approx(0.04)
