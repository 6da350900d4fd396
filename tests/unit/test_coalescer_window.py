"""The coalescer's adaptive gathering window (cortex_web/coalescer.py): a busy group whose requests arrive
in bursts gathers them into one message instead of sending the first alone; an idle group, or one whose
requests arrive further apart than the window, sends each at once. Time is given, never waited for."""
from __future__ import annotations

from cortex_tasks.core.jobs.store import NewJob
from cortex_web.coalescer import MIN_QUIET_SECONDS, Coalescer, Group, Pace, PendingJob
from cortex_web.replies import ReplyListener

GROUP = Group(tenant="default", task="embed", model="m", params_json="{}", priority=4, queue="gpu",
              task_name="cortex.predict.gpu")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _coalescer(max_wait: float = 0.01, clock: Clock | None = None) -> tuple[Coalescer, list[list[str]]]:
    coalescer = Coalescer(ReplyListener("redis://127.0.0.1:1/0"), max_inflight=2, max_wait=max_wait,
                          clock=clock or Clock())
    sent: list[list[str]] = []
    coalescer._send = lambda group, jobs, message_id: sent.append([job.job_id for job in jobs])
    # No dispatching thread: the tests take the ready messages themselves (_ready_batches).
    coalescer._thread = type("Running", (), {"is_alive": staticmethod(lambda: True)})()
    return coalescer, sent


def _job(job_id: str, queued_at: float) -> PendingJob:
    return PendingJob(job_id, ["text"], NewJob(owner="o", kind="predict", task="embed", tenant="default"),
                      queued_at=queued_at)


def _busy(coalescer: Coalescer, round_trip: float, gap: float, burst_gap: float | None,
          last_arrival: float = 0.0) -> None:
    """One message of the group in flight, and its pace measured."""
    with coalescer._condition:
        coalescer._track(GROUP)
    coalescer._pace[GROUP] = Pace(last_arrival=last_arrival, gap=gap, burst_gap=burst_gap, round_trip=round_trip)


def test_an_idle_group_sends_a_request_at_once():
    coalescer, sent = _coalescer()
    coalescer._pace[GROUP] = Pace(last_arrival=0.0, gap=0.001, burst_gap=0.001, round_trip=0.04)
    coalescer.submit(GROUP, _job("alone", 1.0))
    assert sent == [["alone"]]


def test_a_busy_group_gathers_a_burst_until_arrivals_pause():
    clock = Clock()
    coalescer, sent = _coalescer(clock=clock)
    _busy(coalescer, round_trip=0.04, gap=0.005, burst_gap=0.001, last_arrival=0.999)
    for index in range(3):
        clock.now = 1.0 + index * 0.001
        coalescer.submit(GROUP, _job(f"burst-{index}", clock.now))
    assert sent == []  # the first did not leave alone
    with coalescer._condition:
        ready, due = coalescer._ready_batches()
    # Held until arrivals pause for three usual gaps after the last one (the 10 ms window is further off).
    burst_gap = coalescer._pace[GROUP].burst_gap
    assert ready == [] and due == 1.002 + 3 * burst_gap
    clock.now = due
    with coalescer._condition:
        ready, due = coalescer._ready_batches()
    assert [[job.job_id for job in jobs] for _, jobs, _ in ready] == [["burst-0", "burst-1", "burst-2"]]
    assert due is None


def test_a_gathering_waits_no_longer_than_the_window():
    """Arrivals that never pause: the message leaves once its first request waited the window."""
    pace = Pace(last_arrival=5.008, gap=0.001, burst_gap=0.001, round_trip=0.5)  # the latest just came
    coalescer, _ = _coalescer(max_wait=0.01)
    coalescer._pace[GROUP] = pace
    assert coalescer._gathering_ends(GROUP, first_queued_at=4.999) == 4.999 + 0.01  # capped by max_wait
    pace.round_trip = 0.016
    assert coalescer._gathering_ends(GROUP, first_queued_at=5.0) == 5.0 + 0.008  # half the round trip


def test_sparse_requests_of_a_busy_group_leave_at_once():
    """A request that nobody is expected to join within the window (two clients, say) is not held."""
    coalescer, sent = _coalescer()
    _busy(coalescer, round_trip=0.04, gap=0.03, burst_gap=None, last_arrival=0.97)
    coalescer.submit(GROUP, _job("sparse", 1.0))
    assert sent == [["sparse"]]


def test_a_window_of_zero_never_holds_a_request():
    coalescer, sent = _coalescer(max_wait=0.0)
    _busy(coalescer, round_trip=0.04, gap=0.001, burst_gap=0.001, last_arrival=0.999)
    coalescer.submit(GROUP, _job("first", 1.0))
    coalescer.submit(GROUP, _job("second", 1.0005))
    assert sent == [["first"]]  # the second is held by the in-flight budget only (two in flight now)


def test_the_pace_is_measured_from_arrivals_and_replies():
    clock = Clock()
    coalescer, _ = _coalescer(clock=clock)
    for index in range(3):
        clock.now = 10.0 + index * 0.002
        coalescer.submit(GROUP, _job(f"job-{index}", clock.now))
    pace = coalescer._pace[GROUP]
    assert pace.last_arrival == 10.004 and pace.gap is not None and abs(pace.gap - 0.002) < 1e-9
    assert pace.round_trip is None
    first = next(iter(coalescer._inflight[GROUP]))  # sent at 10.0
    clock.now = 10.03
    coalescer._message_done(first)
    assert abs(pace.round_trip - 0.03) < 1e-9


def test_clients_taking_turns_do_not_stretch_the_quiet_time():
    """Gaps of a few clients taking turns (8 ms with a 20 ms window) are not a burst's: a gathering of
    theirs leaves after the shortest quiet time, not after the whole window."""
    pace = Pace()
    for index in range(10):
        pace.arrived(index * 0.008, max_window=0.02)
    assert pace.burst_gap is None
    assert pace.quiet(window=0.02) == MIN_QUIET_SECONDS


def test_the_shipped_default_window_is_twenty_milliseconds(monkeypatch):
    from cortex_tasks.core.settings import Settings

    monkeypatch.delenv("CORTEX_COALESCE_MAX_WAIT_MS", raising=False)
    assert Settings().coalesce_max_wait_ms == 20.0
    assert Coalescer(ReplyListener("redis://127.0.0.1:1/0")).max_wait == 0.02
