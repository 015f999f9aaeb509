"""The fan-out lag of a shared bus (bus/fanoutlag.py): vectors of the pure tracker."""

from __future__ import annotations

import pytest

from sse_daemon.bus.fanoutlag import COALESCE, FanoutLag

pytestmark = pytest.mark.reactor_free


def test_nothing_waits_until_a_publish_is_acknowledged() -> None:
    lags = FanoutLag()
    assert lags.lag("S", 100.0) == 0.0 and lags.streams() == []


def test_the_lag_is_the_age_of_the_oldest_publish_not_read_back() -> None:
    lags = FanoutLag()
    lags.accepted("S", (1000, 0), now=10.0)
    lags.accepted("S", (1000, 5), now=10.5)
    lags.accepted("S", (1001, 0), now=11.0)
    assert lags.lag("S", now=12.0) == 2.0
    lags.delivered("S", (1000, 0))  # the first publish is read back: the second is now the oldest
    assert lags.lag("S", now=12.0) == 1.5
    lags.delivered("S", (1000, 9))  # past the second's newest entry, not yet the third's
    assert lags.lag("S", now=12.0) == 1.0
    lags.delivered("S", (1001, 0))
    assert lags.lag("S", now=12.0) == 0.0


def test_streams_are_apart() -> None:
    lags = FanoutLag()
    lags.accepted("A", (5, 0), now=1.0)
    lags.accepted("B", (6, 0), now=2.0)
    lags.delivered("A", (9, 0))
    assert (lags.lag("A", 3.0), lags.lag("B", 3.0)) == (0.0, 1.0)
    lags.forget("B")
    assert lags.lag("B", 3.0) == 0.0 and lags.streams() == ["A"]


def test_close_acknowledgements_share_a_mark_that_keeps_the_older_time() -> None:
    lags = FanoutLag()
    for i in range(1000):  # a burst: a thousand publishes within one coalescing window
        lags.accepted("S", (100 + i, 0), now=50.0 + i * COALESCE / 2000)
    assert len(lags._marks["S"]) == 1, "one mark for the burst: memory does not grow with the events"
    assert lags.lag("S", now=51.0) == pytest.approx(1.0), "the burst's first acknowledgement sets the age"
    lags.delivered("S", (500, 0))
    assert lags.lag("S", now=51.0) == pytest.approx(1.0), "a mark goes only once all of its entries are read"
    lags.delivered("S", (1099, 0))
    assert lags.lag("S", now=51.0) == 0.0


def test_a_clock_that_steps_back_reads_no_negative_lag() -> None:
    lags = FanoutLag()
    lags.accepted("S", (1, 0), now=10.0)
    assert lags.lag("S", now=9.0) == 0.0


def test_the_events_waiting_are_counted_by_the_publish_they_came_in() -> None:
    lags = FanoutLag()
    lags.accepted("S", (1, 0), now=1.0, count=100)
    lags.accepted("S", (1, 99), now=1.0 + COALESCE / 2, count=50)  # merged into the first mark
    lags.accepted("S", (2, 0), now=2.0, count=10)
    assert lags.waiting("S") == 160 and lags.waiting("T") == 0
    lags.delivered("S", (1, 99))
    assert lags.waiting("S") == 10


def test_publishes_redis_no_longer_holds_stop_waiting_and_those_it_holds_still_wait() -> None:
    lags = FanoutLag()
    lags.accepted("S", (1000, 0), now=10.0, count=3)
    lags.accepted("S", (1001, 0), now=11.0, count=4)
    lags.accepted("S", (1002, 0), now=12.0, count=5)
    lags.lost_after("S", (1000, 7))  # restarted holding entries up to 1000-7: the later two are gone
    assert lags.lag("S", now=13.0) == 3.0 and lags.waiting("S") == 3
    lags.lost_after("S", (0, 0))  # restarted empty
    assert lags.lag("S", now=13.0) == 0.0 and lags.waiting("S") == 0
    lags.lost_after("T", (0, 0))  # a stream with nothing waiting: nothing to do


def test_a_stream_keeps_a_bounded_number_of_marks_and_still_reads_its_lag() -> None:
    """With nothing refusing publishes (fanout.max.lag: 0) a fan-out behind for long must not hold a mark per
    COALESCE for ever: past MAX_MARKS publishes join the newest; the lag and the count stay right."""
    from sse_daemon.bus.fanoutlag import MAX_MARKS

    lags = FanoutLag()
    for n in range(MAX_MARKS + 500):
        lags.accepted("S", (n, 0), n * COALESCE * 2)
    assert len(lags._marks["S"]) == MAX_MARKS
    assert lags.lag("S", (MAX_MARKS + 500) * COALESCE * 2) == pytest.approx((MAX_MARKS + 500) * COALESCE * 2)
    assert lags.waiting("S") == MAX_MARKS + 500
    lags.delivered("S", (MAX_MARKS + 498, 0))
    assert lags.waiting("S") == 501, "the newest mark holds what joined it until all of it is read back"
    lags.delivered("S", (MAX_MARKS + 499, 0))
    assert lags.waiting("S") == 0
