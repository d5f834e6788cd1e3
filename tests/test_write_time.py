"""The write-timestamp rule (spec streaming.md §3.4) and its setting, without servers."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dataflow import config
from dataflow.source import NO_TIMESTAMP
from dataflow.write_time import write_timestamp

CLOCK = 1_764_000_000_000_000  # µs, late 2025
HOUR = 3_600_000_000

# Plausible ranges: any date the flattener accepts (years 1..9999) and offsets up to the cap.
updated = st.integers(min_value=-62_135_596_800_000_000, max_value=253_402_300_799_999_999)
clocks = st.integers(min_value=0, max_value=4_102_444_800_000_000)
offsets = st.integers(min_value=0, max_value=config.MAX_WRITE_TIMESTAMP_OFFSET_US)
kafka_ms = st.one_of(st.none(), st.just(NO_TIMESTAMP), st.integers(0, 4_102_444_800_000))


def test_updated_at_plus_offset():
    assert write_timestamp(CLOCK - 5 * HOUR, 1, CLOCK, 2 * HOUR) == CLOCK - 3 * HOUR


def test_without_offset_the_old_rule_holds():
    assert write_timestamp(CLOCK - 1, 1, CLOCK, 0) == CLOCK - 1
    assert write_timestamp(CLOCK + 1, 1, CLOCK, 0) == CLOCK


def test_future_updated_at_is_clamped_to_clock_plus_offset():
    assert write_timestamp(CLOCK + 10 * HOUR, None, CLOCK, 2 * HOUR) == CLOCK + 2 * HOUR


def test_kafka_timestamp_when_updated_at_is_unusable():
    kafka = (CLOCK - HOUR) // 1000
    assert write_timestamp(None, kafka, CLOCK, HOUR) == kafka * 1000 + HOUR
    # Even when the Kafka timestamp is later than updatedAt would have been: it is only used
    # when updatedAt is unusable.
    assert write_timestamp(CLOCK - 3 * HOUR, kafka, CLOCK, 0) == CLOCK - 3 * HOUR


def test_future_kafka_timestamp_is_clamped_too():
    assert write_timestamp(None, (CLOCK + HOUR) // 1000, CLOCK, 7) == CLOCK + 7


@pytest.mark.parametrize("kafka", [None, NO_TIMESTAMP, -5])
def test_wall_clock_when_nothing_else(kafka):
    assert write_timestamp(None, kafka, CLOCK, HOUR) == CLOCK + HOUR


def test_kafka_epoch_zero_is_a_timestamp():
    assert write_timestamp(None, 0, CLOCK, 3) == 3


@given(updated, kafka_ms, clocks, offsets)
def test_never_later_than_clock_plus_offset(u, k, clock, offset):
    assert write_timestamp(u, k, clock, offset) <= clock + offset


@given(updated, kafka_ms, clocks, offsets)
def test_offset_shifts_every_stamp_by_the_same_amount(u, k, clock, offset):
    """What keeps our own writes in order: the offset never reorders two stamps."""
    assert write_timestamp(u, k, clock, offset) == write_timestamp(u, k, clock, 0) + offset


@given(updated, updated, clocks, offsets)
def test_order_of_updated_at_is_kept(a, b, clock, offset):
    """A later event never gets an earlier stamp (ties only where the clamp merges them)."""
    lo, hi = min(a, b), max(a, b)
    assert write_timestamp(lo, None, clock, offset) <= write_timestamp(hi, None, clock, offset)


@given(updated, clocks, offsets)
def test_past_events_keep_updated_at_exactly(u, clock, offset):
    if u <= clock:
        assert write_timestamp(u, None, clock, offset) == u + offset


@given(st.integers(0, 10_000), clocks)
def test_update_after_switch_beats_sunbirds_stamp(lag_s, clock):
    """Sunbird stamped a row with its wall clock ``lag`` after the event; with an offset that
    covers the lag, any later update we consume wins, however late we consume it."""
    event = clock - 10 * HOUR
    sunbird_stamp = event + lag_s * 1_000_000
    offset = lag_s * 1_000_000
    update = event + 1  # newer than the event Sunbird wrote, older than Sunbird's stamp
    assert write_timestamp(update, None, clock, offset) > sunbird_stamp
    if lag_s > 0:
        assert write_timestamp(update, None, clock, 0) < sunbird_stamp


# --- the setting ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "us"),
    [
        ("2h", 2 * HOUR),
        ("90m", 90 * 60_000_000),
        ("30s", 30_000_000),
        ("1d", 24 * HOUR),
        ("1d12h", 36 * HOUR),
        (" 2H ", 2 * HOUR),
        ("0", 0),
        ("", 0),
        ("7200000000", 2 * HOUR),
        ("+15", 15),
        ("3650d", config.MAX_WRITE_TIMESTAMP_OFFSET_US),
    ],
)
def test_offset_setting_accepts(raw, us):
    assert config.load({"PUI_WRITE_TIMESTAMP_OFFSET": raw}).write_timestamp_offset_us == us


def test_offset_defaults_to_zero():
    assert config.load({}).write_timestamp_offset_us == 0


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        ("-1h", "must not be negative"),
        ("-5", "must not be negative"),
        ("2x", "a duration such as 2h"),
        ("2 h", "a duration such as 2h"),
        ("1.5h", "a duration such as 2h"),
        ("100ms", "a duration such as 2h"),
        ("h", "a duration such as 2h"),
        ("\u0662h", "a duration such as 2h"),  # a non-ASCII digit
        ("3651d", "at most 3650d"),
        ("9" * 19, "at most 3650d"),
        ("9" * 40, "a duration such as 2h"),
    ],
)
def test_offset_setting_refuses(raw, says):
    with pytest.raises(config.ConfigError, match="PUI_WRITE_TIMESTAMP_OFFSET") as err:
        config.load({"PUI_WRITE_TIMESTAMP_OFFSET": raw})
    assert says in str(err.value)


def test_offset_setting_is_described():
    described = config.load({"PUI_WRITE_TIMESTAMP_OFFSET": "2h"}).describe()
    assert "write_timestamp_offset_us=7200000000" in described
