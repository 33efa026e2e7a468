"""Backoff and Retry-After parsing."""

from __future__ import annotations

import random

import pytest

from orchestrator.llm import RetryPolicy, parse_retry_after


@pytest.mark.parametrize(("value", "seconds"),
                         [("0", 0.0), ("7", 7.0), (" 1.5 ", 1.5), ("-3", 0.0)])
def test_retry_after_seconds(value: str, seconds: float) -> None:
    assert parse_retry_after(value) == seconds


def test_retry_after_http_date_is_relative_to_now() -> None:
    now = 1_445_412_480.0  # 2015-10-21 07:28:00 GMT
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now=now) == pytest.approx(30.0)
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:30 -0000", now=now) == pytest.approx(30.0)
    assert parse_retry_after("Wed, 21 Oct 2015 07:27:00 GMT", now=now) == 0.0


@pytest.mark.parametrize("junk", ["soon", "", "Wed, 99 Foo"])
def test_unreadable_retry_after_is_none(junk: str) -> None:
    assert parse_retry_after(junk) is None


def test_backoff_doubles_within_jitter_and_is_capped() -> None:
    policy = RetryPolicy(base_s=1.0, cap_s=5.0, rng=random.Random(0))
    for retry, ceiling in enumerate([1.0, 2.0, 4.0, 5.0, 5.0]):
        delays = [policy.delay(retry) for _ in range(50)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 1  # jittered, so clients do not retry in lockstep


def test_retry_after_wins_over_backoff_but_is_capped() -> None:
    policy = RetryPolicy(base_s=1.0, retry_after_cap_s=10.0)
    assert policy.delay(3, "2") == 2.0
    assert policy.delay(0, "120") == 10.0
    assert 0.5 <= policy.delay(0, "whenever") <= 1.0  # unreadable hint: plain backoff


def test_negative_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="retry settings"):
        RetryPolicy(max_retries=-1)
