"""Stream declarations, event checks, sliding windows, temporal features and the per-event detectors
(plain code: no services)."""
from __future__ import annotations

import math
import random

import numpy as np
import pytest
from pydantic import ValidationError

from cortex_tasks.core.settings import StreamsConfig
from cortex_tasks.core.streams.declarations import StreamSpec, seconds_of
from cortex_tasks.core.streams.events import InvalidEvent, check_event, check_events
from cortex_tasks.runtime.streams.detectors import (
    ANOMALY,
    NORMAL,
    WARMING_UP,
    EventContext,
    IsolationForestDetector,
    KeyBaselineDetector,
    RobustZScoreDetector,
    SeasonalResidualDetector,
)
from cortex_tasks.runtime.streams.features import FEATURE_NAMES, KeyHistory
from cortex_tasks.runtime.streams.windows import aggregate, window_starts

DECLARATION = {
    "name": "payments",
    "fields": [{"name": "ts", "type": "timestamp"}, {"name": "user", "type": "string"},
               {"name": "amount", "type": "number"}, {"name": "note", "type": "string", "required": False}],
    "timestamp_field": "ts", "key_fields": ["user"], "value_field": "amount",
    "detectors": [{"kind": "robust_zscore"}, {"kind": "key_baseline"},
                  {"kind": "seasonal_residual", "period": "1h", "buckets": 6},
                  {"kind": "isolation_forest", "min_rows": 50}],
    "alert_rules": [{"name": "spike", "detector": "robust_zscore", "min_score": 6, "severity": "high",
                     "fields": ["user"], "cooldown": "15m"}],
}


def spec(**changes) -> StreamSpec:
    return StreamSpec.model_validate({**DECLARATION, **changes})


def context(value: float, window: list[float], history=(0.0, 0.0, 0.0), season=(0.0, 0.0, 0.0), time=0.0):
    return EventContext(time, value, window, history, season, [value] * len(FEATURE_NAMES))


def test_declaration_defaults_follow_the_realtime_pipeline():
    declared = StreamSpec.model_validate({**DECLARATION, "detectors": [{"kind": "robust_zscore"}]})
    assert declared.window.size == 300 and declared.window.overlap == 30 and declared.window.hop == 270
    assert declared.latency_threshold == pytest.approx(0.05)
    assert declared.alert_rules[0].cooldown == 900
    assert StreamSpec.model_validate(declared.stored()) == declared  # what the worker reads back


def test_shipped_stream_settings():
    # The tests shorten the claim idle time and the lateness; these are the values that ship.
    shipped = StreamsConfig()
    assert shipped.buffer_size == 1000 and shipped.processing_interval == pytest.approx(0.1)
    assert shipped.claim_idle == 30 and shipped.lateness == 10


@pytest.mark.parametrize("change, problem", [
    ({"timestamp_field": "user"}, "timestamp_field"),
    ({"value_field": "user"}, "value_field"),
    ({"key_fields": ["amount"]}, "key_fields"),
    ({"window": {"size": "1m", "overlap": "2m"}}, "overlap"),
    ({"detectors": [{"kind": "robust_zscore"}, {"kind": "robust_zscore"}]}, "each kind at most once"),
    ({"detectors": [{"kind": "unknown"}]}, "kind"),
    ({"alert_rules": [{"name": "r", "detector": "key_baseline"}], "detectors": [{"kind": "robust_zscore"}]},
     "does not run"),
    ({"alert_rules": [{"name": "r", "fields": ["secret"]}]}, "not declared"),
    ({"name": "Bad Name"}, "stream name"),
    ({"latency_threshold": "fast"}, "duration"),
])
def test_bad_declarations_say_what_is_wrong(change, problem):
    with pytest.raises(ValidationError, match=problem):
        spec(**change)


def test_durations():
    assert seconds_of("50ms") == pytest.approx(0.05) and seconds_of("5m") == 300 and seconds_of(2) == 2
    with pytest.raises(ValueError):
        seconds_of("-1s")


def test_events_are_checked_field_by_field():
    declared = spec()
    event = check_event(declared, 0, {"ts": "2026-01-01T00:00:00Z", "user": "u1", "amount": 3})
    assert event.time == 1767225600.0 and event.key == "u1" and event.value == 3.0
    problems = [({"ts": 1.7e9, "user": "u1"}, "amount", "required"),
                ({"ts": 1.7e9, "user": "u1", "amount": "3"}, "amount", "expected a number"),
                ({"ts": 1.7e12, "user": "u1", "amount": 3}, "ts", "epoch seconds"),
                ({"ts": "yesterday", "user": "u1", "amount": 3}, "ts", "timestamp"),
                ({"ts": 1.7e9, "user": "u1", "amount": 3, "extra": 1}, "extra", "not a declared field"),
                ({"ts": 1.7e9, "user": 7, "amount": 3}, "user", "expected a string")]
    for raw, field, words in problems:
        with pytest.raises(InvalidEvent, match=words) as caught:
            check_events(declared, [{"ts": 1.7e9, "user": "ok", "amount": 1}, raw])
        assert caught.value.index == 1 and caught.value.field == field
        assert caught.value.details == {"index": 1, "field": field}


def test_sliding_windows_overlap_by_the_declared_overlap():
    assert window_starts(1000.0, 300, 270) == [810.0]
    assert window_starts(830.0, 300, 270) == [540.0, 810.0]  # in the 30 s two windows share
    for time in (0.0, 269.9, 299.0, 12345.6):
        starts = window_starts(time, 300, 270)
        assert all(start <= time < start + 300 for start in starts) and starts
    assert aggregate([1.0, 3.0]).as_dict() == {"count": 2, "sum": 4.0, "mean": 2.0, "min": 1.0, "max": 3.0}
    assert aggregate([]) is None


def test_temporal_features_count_sum_and_mean_over_1h_24h_7d():
    history = KeyHistory()
    start = 1_700_000_000.0
    for minute in range(0, 3 * 24 * 60, 30):  # every 30 min for 3 days, value 10 (then 20 in the last hour)
        time = start + minute * 60
        value = 20.0 if minute >= 3 * 24 * 60 - 60 else 10.0
        history.add(time, value)
    now = start + (3 * 24 * 60 - 1) * 60
    row = dict(zip(FEATURE_NAMES, history.row(now, 20.0)))
    assert row["count_1h"] == 3 and row["mean_1h"] == pytest.approx(20.0)
    # 24h and 7d are whole hour buckets (the current hour and the 23 or 167 before it)
    assert 45 <= row["count_24h"] <= 50
    assert row["count_7d"] == 3 * 48 + 1
    assert row["rate_ratio_1h_24h"] > 1
    assert history.stale_fields(now + 8 * 86400)  # a week later everything is stale


def test_robust_zscore_flags_a_spike_and_not_the_noise():
    rng = random.Random(1)
    window = [100 + rng.gauss(0, 5) for _ in range(60)]
    detector = RobustZScoreDetector(spec().detector("robust_zscore"))
    spike, ordinary, early = detector.predict([context(180, window), context(103, window), context(500, window[:3])], {})
    assert spike.outcome == ANOMALY and spike.score > 10 and spike.expected == pytest.approx(100, abs=3)
    assert ordinary.outcome == NORMAL
    assert early.outcome == WARMING_UP  # fewer than min_points in the window


def test_key_baseline_flags_a_key_that_departs_from_its_own_history():
    detector = KeyBaselineDetector(spec().detector("key_baseline"))
    rng = random.Random(2)
    past = [50 + rng.gauss(0, 2) for _ in range(200)]
    recent = [80 + rng.gauss(0, 2) for _ in range(10)]
    history = (float(len(past) + len(recent)), sum(past) + sum(recent),
               sum(v * v for v in past) + sum(v * v for v in recent))
    changed = detector.judge(context(80, recent, history))
    assert changed.outcome == ANOMALY and changed.expected == pytest.approx(50, abs=1)
    same_recent = past[-10:]
    steady_history = (float(len(past)), sum(past), sum(v * v for v in past))
    assert detector.judge(context(50, same_recent, steady_history)).outcome == NORMAL


def test_seasonal_residual_uses_the_phase_profile_or_a_forecast():
    detector = SeasonalResidualDetector(spec().detector("seasonal_residual"))
    assert detector.phase(0) == 0 and detector.phase(3599) == 5
    season = (20.0, 20 * 100.0, 20 * (100.0 ** 2 + 4.0))  # mean 100, sd 2
    assert detector.judge(context(130, [], season=season)).outcome == ANOMALY
    assert detector.judge(context(101, [], season=season)).outcome == NORMAL
    forecast = SeasonalResidualDetector(spec().detector("seasonal_residual"), lambda time: (500.0, 10.0))
    verdict = forecast.judge(context(130, [], season=season))
    assert verdict.outcome == ANOMALY and verdict.expected == 500 and verdict.score == pytest.approx(-37)


def test_isolation_forest_warms_up_then_flags_outlying_rows():
    detector = IsolationForestDetector(spec().detector("isolation_forest"))
    rng = random.Random(3)
    rows = [[abs(rng.gauss(0, 1)), abs(rng.gauss(0, 0.5))] for _ in range(300)]
    history = (100.0, 0.0, 100.0)
    window = [100 + rng.gauss(0, 2) for _ in range(40)]
    assert detector.predict([context(100, window, history)], {})[0].outcome == WARMING_UP
    assert not detector.fit([row + [0.0] for row in rows])  # rows of another width are not used
    assert detector.fit(rows)
    # A spike departs from its key's trend; a key's first events, or a window too short for a trend, have no
    # row to judge.
    normal, spike = context(101, window, history), context(130, window, history)
    young, short = context(130, window, (5.0, 0.0, 5.0)), context(130, window[:3], history)
    verdicts = detector.predict([normal, spike, young, short], {})
    assert [v.outcome for v in verdicts] == [NORMAL, ANOMALY, WARMING_UP, WARMING_UP]
    assert 0 < verdicts[0].score < verdicts[1].score <= 1 and not math.isnan(verdicts[1].score)
    assert detector.info.task == "anomaly"  # the catalogue's model interface


def test_the_forest_sees_departures_from_the_keys_own_level_not_the_level():
    """Keys at different levels that behave alike get alike forest rows."""
    from cortex_tasks.runtime.streams.features import forest_row

    rng = random.Random(11)
    noise = [rng.gauss(0, 2) for _ in range(40)]
    low = forest_row(104, [100 + n for n in noise], (50, 5000, 50 * (100**2 + 4)))
    high = forest_row(504, [500 + n for n in noise], (50, 25000, 50 * (500**2 + 4)))
    assert low == pytest.approx(high)


def test_local_departures_follow_a_trend_and_see_a_step_or_a_spike():
    from cortex_tasks.runtime.streams.features import local_departures

    rng = random.Random(5)
    rising = [100 + 0.5 * i + rng.gauss(0, 1) for i in range(60)]  # 30 spreads over the window
    drift = local_departures(rising, 130.5 + rng.gauss(0, 1))
    assert drift is not None and abs(drift.value) < 4 and abs(drift.recent) < 4
    assert drift.expected == pytest.approx(100 + 0.5 * 54.5, abs=2) and drift.spread == pytest.approx(1, rel=0.4)
    spike = local_departures(rising, 160.0)
    assert spike is not None and spike.value > 20 and abs(spike.recent) < 4  # one value: the median holds
    stepped = [*rising[:50], *(v + 20 for v in rising[50:])]
    step = local_departures(stepped, 150.5)
    assert step is not None and step.recent > 10
    assert local_departures([1.0, 2.0, 3.0], 4.0) is None  # too few earlier events for a trend


class _Keys:
    """Keys' state kept in memory as the stream worker keeps it in Redis (a 5-minute window), one event at a
    time, with every detector of `detectors` judging each event."""

    def __init__(self, detectors: list[dict], window: float = 300.0) -> None:
        from collections import defaultdict

        from cortex_tasks.runtime.streams.detectors import build_detectors
        from cortex_tasks.runtime.streams.state import KeyState

        self.detectors = build_detectors(spec(detectors=detectors, alert_rules=[]).detectors)
        self.states: dict[str, KeyState] = defaultdict(KeyState)
        self.window = window

    def judge(self, key: str, at: float, value: float) -> dict[str, object]:
        state = self.states[key]
        item = EventContext(at, value, state.values_between(at - self.window, at), tuple(state.history),
                            (0.0, 0.0, 0.0), state.features.row(at, value))
        state.add(at, value, -1)
        while state.window and state.window[0][0] < at - 2 * self.window:
            state.window.pop(0)
        verdicts: dict[str, object] = {d.kind: d.predict([item], {})[0] for d in self.detectors}
        verdicts["row"] = item.forest_row()
        return verdicts


def wave(level: float, at: float) -> float:
    """An hourly wave of 10% of the level."""
    return level + 0.1 * level * math.sin(2 * math.pi * at / 3600)


def test_key_baseline_lets_a_slow_wave_be_and_flags_a_level_shift_on_a_long_series():
    """Three hours of a key whose level swings by 10% an hour (much more than its noise): the swing is its
    ordinary behaviour, not a departure, however little of it the key's early history has seen; a step of
    half that swing is one."""
    keys = _Keys([{"kind": "key_baseline", "threshold": 4, "min_history": 50}])
    rng = random.Random(8)
    outcomes = {"steady": [], "shifted": []}
    for step in range(2160):  # every 5 seconds for 3 hours
        at = step * 5.0
        for key, level in (("steady", 400.0), ("shifted", 300.0)):
            value = wave(level, at) + rng.gauss(0, 2)
            if key == "shifted" and step >= 1500:
                value += 15
            outcomes[key].append(keys.judge(key, at, value)["key_baseline"].outcome)
    assert outcomes["steady"][:10] == [WARMING_UP] * 10
    assert ANOMALY not in outcomes["steady"] and ANOMALY not in outcomes["shifted"][:1500]
    assert outcomes["shifted"][1500:1560].count(ANOMALY) >= 10  # within the five minutes after the step


def test_the_forest_flags_about_its_contamination_on_a_long_series_and_the_spikes():
    """A long stream of keys at different levels on a shared hourly wave, the forest refitted on its recent
    rows as the stream worker does: the rows keep their range as the wave turns, so about `contamination`
    of the ordinary events are flagged (not the third of them that rows of departures from the hour's mean
    gave), and the spikes are."""
    keys = _Keys([{"kind": "isolation_forest", "min_rows": 500, "refit_every": 2000, "max_rows": 2000,
                   "contamination": 0.005}])
    forest = keys.detectors[0]
    rng = random.Random(4)
    rows: list[list[float]] = []
    ordinary = flagged = spikes = spikes_flagged = 0
    for step in range(1800):  # 2.5 hours, every 5 seconds
        at = step * 5.0
        for index in range(10):
            spike = step > 200 and rng.random() < 0.005
            value = wave(100 + 40 * index, at) + rng.gauss(0, 2) + (rng.choice((-1, 1)) * 40 if spike else 0)
            verdicts = keys.judge(f"k{index}", at, value)
            if verdicts["row"] is not None:
                rows.append(verdicts["row"])
            outcome = verdicts["isolation_forest"].outcome
            if spike:
                spikes += 1
                spikes_flagged += outcome == ANOMALY
            elif step > 200:
                ordinary += 1
                flagged += outcome == ANOMALY
        del rows[:-forest.spec.max_rows]
        if forest.wants_fit() and len(rows) >= forest.spec.min_rows:
            assert forest.fit(rows)
    assert spikes >= 20 and spikes_flagged >= 0.8 * spikes
    assert flagged <= 0.02 * ordinary, flagged


def test_alert_rules_make_candidates_with_only_the_named_fields():
    from types import SimpleNamespace

    from cortex_tasks.core.streams.events import check_event as checked
    from cortex_tasks.runtime.streams.alerts import candidates
    from cortex_tasks.runtime.streams.detectors import Verdict
    from cortex_tasks.runtime.streams.service import ScoredEvent

    declared = spec(fields=[*DECLARATION["fields"], {"name": "card", "type": "string", "required": False}])
    runtime = SimpleNamespace(name="payments", spec=declared)
    event = checked(declared, 0, {"ts": 1_767_225_600, "user": "u1", "amount": 900.0, "card": "4111-secret"})
    spike = ScoredEvent("1767225600123-0", event, [Verdict("robust_zscore", ANOMALY, 12.5, 100.0),
                                                   Verdict("key_baseline", NORMAL, 0.3, 99.0)], [], [1767225420.0])
    weak = ScoredEvent("1767225600124-0", event, [Verdict("robust_zscore", ANOMALY, 4.0, 100.0)], [], [1767225420.0])
    found = candidates(runtime, [spike, weak])  # the weak one is under the rule's min_score (6)
    assert len(found) == 1
    alert = found[0]
    assert (alert.source, alert.rule, alert.group_key, alert.severity) == ("stream:payments", "spike", "u1", "high")
    assert alert.details["fields"] == {"user": "u1"} and "4111-secret" not in str(alert.details)
    assert alert.details["detector"] == "robust_zscore" and alert.details["score"] == 12.5
    assert alert.occurred_at.tzinfo is not None
    assert alert.dedup_key == "payments|spike|u1|robust_zscore|1767225420"
    assert alert.policy is not None and alert.policy.cooldown_s == 900  # the rule's own cooldown, defaults beside
    assert candidates(SimpleNamespace(name="payments", spec=spec(alert_rules=[{"name": "any"}])),
                      [spike])[0].policy is None  # no aggregation given: the alerting settings' defaults


@pytest.mark.parametrize("max_features", [1.0, 0.5])
def test_the_compiled_forest_scores_as_scikit_learn_does(max_features):
    """The stream's flat-array walk of the trees gives scikit-learn's own scores (`-score_samples`), on
    rows inside, at the edge of and far outside the training data, with repeated values and column subsets."""
    from sklearn.ensemble import IsolationForest

    from cortex_tasks.runtime.streams.detectors import CompiledForest

    rng = np.random.default_rng(5)
    training = np.round(rng.normal(0, 1, (600, 6)), 2)  # rounded: many ties at the thresholds
    training[:50, 2] = 0.0
    forest = IsolationForest(n_estimators=60, contamination=0.01, max_features=max_features,
                             random_state=3).fit(training)
    probes = np.vstack([training[:100], rng.normal(0, 4, (200, 6)), np.full((1, 6), 1e9), training.min(axis=0)[None]])
    compiled = CompiledForest(forest).anomaly_scores(probes)
    np.testing.assert_allclose(compiled, -forest.score_samples(probes), rtol=0, atol=1e-12)
    assert ((compiled > -forest.offset_) == (forest.predict(probes) == -1)).all()
