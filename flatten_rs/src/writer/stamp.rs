//! The `USING TIMESTAMP` of a write (spec §3.4), the same rule as `dataflow/write_time.py`.

/// `updatedAt` (µs) when usable, else the Kafka timestamp, else the wall clock; never later
/// than the wall clock; then shifted by the deployment's fixed switch-over offset, so that the
/// result is `updatedAt + offset` clamped to `clock + offset`.
pub fn write_timestamp(
    updated_at_us: Option<i64>,
    kafka_ts_ms: Option<i64>,
    clock_us: i64,
    offset_us: i64,
) -> i64 {
    let ts = updated_at_us
        .or_else(|| kafka_ts_ms.map(|ms| ms.saturating_mul(1000)))
        .unwrap_or(clock_us);
    ts.min(clock_us).saturating_add(offset_us)
}

#[cfg(test)]
mod tests {
    use super::write_timestamp;

    const CLOCK: i64 = 1_700_000_000_000_000;

    #[test]
    fn updated_at_wins_then_kafka_then_clock() {
        assert_eq!(write_timestamp(Some(5), Some(7), CLOCK, 0), 5);
        assert_eq!(write_timestamp(None, Some(7), CLOCK, 0), 7_000);
        assert_eq!(write_timestamp(None, None, CLOCK, 0), CLOCK);
    }

    #[test]
    fn future_stamps_are_clamped_to_the_clock_before_the_offset() {
        assert_eq!(write_timestamp(Some(CLOCK + 10), None, CLOCK, 0), CLOCK);
        assert_eq!(write_timestamp(Some(CLOCK + 10), None, CLOCK, 3), CLOCK + 3);
        assert_eq!(write_timestamp(Some(5), None, CLOCK, 3), 8);
    }

    #[test]
    fn the_offset_keeps_the_order_of_writes() {
        let off = 7_200_000_000;
        for (a, b) in [(1, 2), (CLOCK - 1, CLOCK), (CLOCK, CLOCK + 5)] {
            assert!(
                write_timestamp(Some(a), None, CLOCK, off)
                    <= write_timestamp(Some(b), None, CLOCK, off)
            );
        }
    }
}
