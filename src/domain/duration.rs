//! Go-style durations (`300ms`, `1m30s`, `1.5h`), the format of `spec.synchronization.time`.

use std::time::Duration;

/// Why a duration string was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("empty duration")]
    Empty,
    #[error("negative durations are not allowed")]
    Negative,
    #[error("expected a number at {0:?}")]
    MissingNumber(String),
    #[error("missing unit after {0:?} (use ns, us, ms, s, m or h)")]
    MissingUnit(String),
    #[error("unknown unit {0:?} (use ns, us, ms, s, m or h)")]
    UnknownUnit(String),
    #[error("duration is too large")]
    Overflow,
}

/// Parses a Go duration. Like Go, a bare `0` is allowed and every other number needs a unit.
pub fn parse_go_duration(input: &str) -> Result<Duration, DurationError> {
    let mut rest = input.trim();
    if rest.is_empty() {
        return Err(DurationError::Empty);
    }
    if let Some(stripped) = rest.strip_prefix('+') {
        rest = stripped;
        if rest.is_empty() {
            return Err(DurationError::Empty);
        }
    } else if rest.starts_with('-') {
        return Err(DurationError::Negative);
    }
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total_nanos: u128 = 0;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, after) = rest.split_at(number_len);
        if number.is_empty() || number == "." || number.matches('.').count() > 1 {
            return Err(DurationError::MissingNumber(rest.to_string()));
        }
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, remainder) = after.split_at(unit_len);
        let unit_nanos: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => return Err(DurationError::MissingUnit(number.to_string())),
            other => return Err(DurationError::UnknownUnit(other.to_string())),
        };
        total_nanos = total_nanos
            .checked_add(scaled(number, unit_nanos)?)
            .ok_or(DurationError::Overflow)?;
        rest = remainder;
    }
    let secs = u64::try_from(total_nanos / 1_000_000_000).map_err(|_| DurationError::Overflow)?;
    // The remainder of a division by 10^9 always fits in u32.
    let nanos = (total_nanos % 1_000_000_000) as u32;
    Ok(Duration::new(secs, nanos))
}

/// Fraction digits that count: 10^25 × the largest unit (an hour in
/// nanoseconds) still fits in u128, and later digits are below a nanosecond.
const FRACTION_DIGITS: usize = 25;

/// `number` (digits with at most one dot) times `unit_nanos`, truncated to whole nanoseconds.
fn scaled(number: &str, unit_nanos: u128) -> Result<u128, DurationError> {
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let whole: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| DurationError::Overflow)?
    };
    let whole_nanos = whole
        .checked_mul(unit_nanos)
        .ok_or(DurationError::Overflow)?;
    let fraction = &fraction[..fraction.len().min(FRACTION_DIGITS)];
    let fraction_nanos = if fraction.is_empty() {
        0
    } else {
        // At most 25 ASCII digits: parses, and the product cannot overflow.
        let numerator: u128 = fraction.parse().map_err(|_| DurationError::Overflow)?;
        numerator * unit_nanos / 10u128.pow(fraction.len() as u32)
    };
    whole_nanos
        .checked_add(fraction_nanos)
        .ok_or(DurationError::Overflow)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_forms_go_accepts() {
        let cases = [
            ("20s", Duration::from_secs(20)),
            ("300ms", Duration::from_millis(300)),
            ("1m30s", Duration::from_secs(90)),
            ("2h", Duration::from_secs(7200)),
            ("1.5h", Duration::from_secs(5400)),
            (".5s", Duration::from_millis(500)),
            ("1h2m3s4ms5us6ns", Duration::new(3723, 4_005_006)),
            ("10µs", Duration::from_micros(10)),
            ("+5s", Duration::from_secs(5)),
            ("0", Duration::ZERO),
            // Exact to the nanosecond, however many fraction digits.
            (".00000000002m", Duration::from_nanos(1)),
            (
                "1.0000000000000000000000000000001h",
                Duration::from_secs(3600),
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(parse_go_duration(input), Ok(expected), "{input}");
        }
    }

    #[test]
    fn rejects_what_go_rejects() {
        assert_eq!(parse_go_duration(""), Err(DurationError::Empty));
        assert_eq!(parse_go_duration("+"), Err(DurationError::Empty));
        assert_eq!(parse_go_duration("-5s"), Err(DurationError::Negative));
        assert_eq!(
            parse_go_duration("banana"),
            Err(DurationError::MissingNumber("banana".into()))
        );
        assert_eq!(
            parse_go_duration("20"),
            Err(DurationError::MissingUnit("20".into()))
        );
        assert_eq!(
            parse_go_duration("5d"),
            Err(DurationError::UnknownUnit("d".into()))
        );
        assert_eq!(
            parse_go_duration("1.2.3s"),
            Err(DurationError::MissingNumber("1.2.3s".into()))
        );
        assert_eq!(
            parse_go_duration("99999999999999999999999h"),
            Err(DurationError::Overflow)
        );
        assert_eq!(
            parse_go_duration("340282366920938463463374607431768.3ms"),
            Err(DurationError::Overflow)
        );
    }
}
