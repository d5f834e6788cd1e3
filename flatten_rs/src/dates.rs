//! Dates and write timestamps (spec §3.4): exact calendar checks, integer arithmetic only.

use crate::json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Date {
    pub year: i32,
    pub month: u8,
    pub day: u8,
}

impl Date {
    /// Days since 1970-01-01 (negative before it), as CQL's `date` counts them.
    pub fn days_since_epoch(&self) -> i64 {
        days_from_civil(
            i64::from(self.year),
            i64::from(self.month),
            i64::from(self.day),
        )
    }
}

/// The calendar date and the write timestamp (µs since the epoch, UTC) of a date value.
pub type Stamp = (Date, i64);

const DAY_US: i64 = 86_400_000_000;
const MIN_DAYS: i64 = -719_162; // 0001-01-01
const MAX_DAYS: i64 = 2_932_896; // 9999-12-31

fn is_leap(y: i64) -> bool {
    y % 4 == 0 && (y % 100 != 0 || y % 400 == 0)
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> Date {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    Date {
        year: y as i32,
        month: m as u8,
        day: d as u8,
    }
}

fn digits(b: &[u8], at: usize, n: usize) -> Option<i64> {
    let s = b.get(at..at + n)?;
    let mut v = 0i64;
    for &c in s {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + i64::from(c - b'0');
    }
    Some(v)
}

/// `YYYY-MM-DD[(T| )HH:MM[:SS[.f{1,9}]][Z|±HH:MM|±HHMM]]`.
pub fn from_string(s: &str) -> Option<Stamp> {
    let b = s.as_bytes();
    let year = digits(b, 0, 4)?;
    if b.get(4) != Some(&b'-') || b.get(7) != Some(&b'-') {
        return None;
    }
    let month = digits(b, 5, 2)?;
    let day = digits(b, 8, 2)?;
    if year < 1 || !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    let days = days_from_civil(year, month, day);
    let date = Date {
        year: year as i32,
        month: month as u8,
        day: day as u8,
    };
    let mut i = 10;
    let (mut hour, mut minute, mut second, mut micros, mut offset) = (0, 0, 0, 0i64, 0i64);
    if i < b.len() {
        if !matches!(b[i], b'T' | b' ') {
            return None;
        }
        hour = digits(b, i + 1, 2)?;
        if b.get(i + 3) != Some(&b':') {
            return None;
        }
        minute = digits(b, i + 4, 2)?;
        i += 6;
        if b.get(i) == Some(&b':') {
            second = digits(b, i + 1, 2)?;
            i += 3;
            if b.get(i) == Some(&b'.') {
                let start = i + 1;
                let mut end = start;
                while end < b.len() && b[end].is_ascii_digit() {
                    end += 1;
                }
                let n = end - start;
                if !(1..=9).contains(&n) {
                    return None;
                }
                // Digits past microseconds are dropped, not rounded.
                let kept = n.min(6);
                micros = digits(b, start, kept)? * 10i64.pow((6 - kept) as u32);
                i = end;
            }
        }
        if hour > 23 || minute > 59 || second > 59 {
            return None;
        }
        match b.get(i) {
            None => {}
            Some(b'Z') => {
                i += 1;
            }
            Some(&sign @ (b'+' | b'-')) => {
                let oh = digits(b, i + 1, 2)?;
                let om;
                if b.get(i + 3) == Some(&b':') {
                    om = digits(b, i + 4, 2)?;
                    i += 6;
                } else {
                    om = digits(b, i + 3, 2)?;
                    i += 5;
                }
                if oh > 23 || om > 59 {
                    return None;
                }
                offset = (oh * 3600 + om * 60) * if sign == b'+' { 1 } else { -1 };
            }
            Some(_) => return None,
        }
        if i != b.len() {
            return None;
        }
    }
    let us = days * DAY_US + ((hour * 60 + minute) * 60 + second - offset) * 1_000_000 + micros;
    Some((date, us))
}

/// Epoch milliseconds written as an optional `-` and digits.
pub fn from_millis(text: &str) -> Option<Stamp> {
    let digits_part = text.strip_prefix('-').unwrap_or(text);
    if digits_part.is_empty() || !digits_part.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let ms: i64 = text.parse().ok()?;
    let days = ms.div_euclid(86_400_000);
    if !(MIN_DAYS..=MAX_DAYS).contains(&days) {
        return None;
    }
    Some((civil_from_days(days), ms * 1000))
}

fn is_integer_token(num: &str) -> bool {
    !num.bytes().any(|c| matches!(c, b'.' | b'e' | b'E'))
}

/// Any accepted form of a date value, or None.
pub fn parse(value: Option<&Value<'_>>) -> Option<Stamp> {
    match value? {
        Value::Str(s) => from_string(s),
        Value::Num(n) if is_integer_token(n) => from_millis(n),
        obj @ Value::Object(_) if obj.distinct_keys() == 1 => match obj.get("$date")? {
            Value::Str(s) => from_string(s),
            Value::Num(n) if is_integer_token(n) => from_millis(n),
            inner @ Value::Object(_) if inner.distinct_keys() == 1 => {
                match inner.get("$numberLong")? {
                    Value::Str(s) => from_millis(s),
                    _ => None,
                }
            }
            _ => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_days() {
        for z in [MIN_DAYS, -1, 0, 1, 19_000, MAX_DAYS] {
            let d = civil_from_days(z);
            assert_eq!(
                days_from_civil(i64::from(d.year), i64::from(d.month), i64::from(d.day)),
                z
            );
        }
    }

    #[test]
    fn strings() {
        let (d, us) = from_string("2023-01-12T06:30:56.829Z").unwrap();
        assert_eq!((d.year, d.month, d.day), (2023, 1, 12));
        assert_eq!(us, 1_673_505_056_829_000);
        assert!(from_string("2023-02-29").is_none());
        assert!(from_string("2024-02-29").is_some());
        assert!(from_string("2023-01-01T24:00").is_none());
        assert!(from_string("2023-01-01T10:00:00.1234567891").is_none());
        let (_, a) = from_string("2023-01-01T05:30+05:30").unwrap();
        let (_, b) = from_string("2023-01-01T00:00Z").unwrap();
        assert_eq!(a, b);
        assert_eq!(
            from_string("2023-01-01T00:00+0530").unwrap().1,
            a - (5 * 60 + 30) * 60_000_000
        );
    }

    #[test]
    fn millis() {
        assert_eq!(
            from_millis("0").unwrap().0,
            Date {
                year: 1970,
                month: 1,
                day: 1
            }
        );
        assert_eq!(
            from_millis("-1").unwrap().0,
            Date {
                year: 1969,
                month: 12,
                day: 31
            }
        );
        assert!(from_millis("99999999999999999999").is_none());
        assert!(from_millis("-").is_none());
    }
}
