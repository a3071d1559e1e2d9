"""CheckRecorder: cached metric children count and time exactly like labels() each time."""

from __future__ import annotations

from extauthz.metrics import CheckRecorder, Metrics


def test_each_label_set_is_counted_and_timed_separately() -> None:
    metrics = Metrics()
    recorder = CheckRecorder(metrics)
    for _ in range(3):
        recorder.record("orders", "allow", "ok", 0.0002)
    recorder.record("orders", "deny", "invalid_api_key", 0.0004)
    recorder.record("admin", "allow", "ok", 0.002)
    sample = metrics.registry.get_sample_value
    assert sample("extauthz_checks_total",
                  {"route": "orders", "outcome": "allow", "reason": "ok"}) == 3
    assert sample("extauthz_checks_total",
                  {"route": "orders", "outcome": "deny", "reason": "invalid_api_key"}) == 1
    assert sample("extauthz_checks_total",
                  {"route": "admin", "outcome": "allow", "reason": "ok"}) == 1
    assert sample("extauthz_check_duration_seconds_count", {"route": "orders"}) == 4
    assert sample("extauthz_check_duration_seconds_sum", {"route": "admin"}) == 0.002


def test_children_are_made_once_and_count_like_labels() -> None:
    from extauthz.metrics import Children, Metrics

    metrics = Metrics()
    children = Children(metrics.authentications)
    first = children("jwt", "ok")
    assert children("jwt", "ok") is first
    first.inc()
    children("jwt", "expired").inc(2)
    assert metrics.authentications.labels("jwt", "ok")._value.get() == 1
    assert metrics.authentications.labels("jwt", "expired")._value.get() == 2
    assert metrics.authentication_results("api_key", "ok") is metrics.authentication_results(
        "api_key", "ok")
