//! Durations as written in config files and on the command line: `30s`, `5m`, `1h`, `7d`.

use std::time::Duration;

/// Why a string is not a duration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Not `<number><unit>` with unit one of s, m, h, d.
    #[error("`{0}` is not a duration (expected a number and a unit: 30s, 5m, 1h, 7d)")]
    Malformed(String),
    /// The number does not fit.
    #[error("duration `{0}` is too large")]
    Overflow(String),
}

/// Parses `30s`, `5m`, `1h`, `7d` (one number, one unit; `0s` is allowed here, callers decide
/// whether zero makes sense).
pub fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    let malformed = || DurationError::Malformed(s.to_owned());
    let unit_at = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(malformed)?;
    let (num, unit) = s.split_at(unit_at);
    if num.is_empty() {
        return Err(malformed());
    }
    let n: u64 = num
        .parse()
        .map_err(|_| DurationError::Overflow(s.to_owned()))?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(malformed()),
    };
    let secs = n
        .checked_mul(mult)
        .filter(|v| *v <= i64::MAX as u64 / 1000)
        .ok_or_else(|| DurationError::Overflow(s.to_owned()))?;
    Ok(Duration::from_secs(secs))
}

/// Formats whole seconds with the largest unit that divides them exactly.
pub fn format_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => "0s".to_owned(),
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse_duration("30s").unwrap().as_secs(), 30);
        assert_eq!(parse_duration("5m").unwrap().as_secs(), 300);
        assert_eq!(parse_duration("1h").unwrap().as_secs(), 3600);
        assert_eq!(parse_duration("7d").unwrap().as_secs(), 604_800);
        assert_eq!(format_duration(Duration::from_secs(3600)), "1h");
        assert_eq!(format_duration(Duration::from_secs(90)), "90s");
    }

    #[test]
    fn rejects_garbage() {
        for s in [
            "",
            "s",
            "10",
            "10x",
            "-1s",
            "1.5h",
            "1h30m",
            " 1s",
            "99999999999999999999s",
        ] {
            assert!(parse_duration(s).is_err(), "{s}");
        }
        assert!(matches!(
            parse_duration("999999999999999d"),
            Err(DurationError::Overflow(_))
        ));
    }
}
