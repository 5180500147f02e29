//! Durations as users write them: `90s`, `10m`, `24h`, `30d`, `1h 30m`, `500ms`.

use std::time::Duration;

/// A duration string that could not be read. Its message is one line: control characters
/// of the input (a newline in a TOML or JSON string) are shown escaped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid duration '{}': {problem} (examples: 90s, 10m, 24h, 30d)",
    escape_controls(input)
)]
pub struct DurationError {
    pub input: String,
    pub problem: String,
}

fn escape_controls(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// The longest duration jobward accepts anywhere; longer values are typos, and they would
/// overflow timestamp arithmetic.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Parses a duration. Zero is accepted here; callers that need a positive value say so.
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    let err = |problem: String| DurationError {
        input: input.to_string(),
        problem,
    };
    let trimmed = input.trim();
    if trimmed.is_empty() {
        return Err(err("it is empty".into()));
    }
    if trimmed.starts_with('-') {
        return Err(err("it is negative".into()));
    }
    if trimmed.chars().all(|c| c.is_ascii_digit()) {
        return Err(err("it has no unit".into()));
    }
    let d = humantime::parse_duration(trimmed).map_err(|e| err(e.to_string()))?;
    if d > MAX_DURATION {
        return Err(err("it is longer than 100 years".into()));
    }
    Ok(d)
}

/// Parses a duration that must be longer than zero.
pub fn parse_positive_duration(input: &str) -> Result<Duration, DurationError> {
    let d = parse_duration(input)?;
    if d.is_zero() {
        return Err(DurationError {
            input: input.to_string(),
            problem: "it must be longer than zero".into(),
        });
    }
    Ok(d)
}

/// A short human form: `2h 5m`, `3.2s`, `450ms`. Precision drops as the value grows.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1_000 {
        return format!("{ms}ms");
    }
    if ms < 60_000 {
        if ms.is_multiple_of(1_000) {
            return format!("{}s", ms / 1_000);
        }
        let tenths = ms / 100;
        return format!("{}.{}s", tenths / 10, tenths % 10);
    }
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (hours, rem) = (rem / 3_600, rem % 3_600);
    let (mins, secs) = (rem / 60, rem % 60);
    let parts = [(days, "d"), (hours, "h"), (mins, "m"), (secs, "s")];
    let first = parts.iter().position(|(v, _)| *v > 0).unwrap_or(3);
    parts[first..(first + 2).min(4)]
        .iter()
        .filter(|(v, _)| *v > 0)
        .map(|(v, u)| format!("{v}{u}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// An exact form that `parse_duration` reads back to the same value: `1h30m`, `45s`,
/// `1500ms`.
pub fn format_exact(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    if !ms.is_multiple_of(1_000) {
        return format!("{ms}ms");
    }
    let secs = d.as_secs();
    let parts = [
        (secs / 86_400, "d"),
        (secs % 86_400 / 3_600, "h"),
        (secs % 3_600 / 60, "m"),
        (secs % 60, "s"),
    ];
    parts
        .iter()
        .filter(|(v, _)| *v > 0)
        .map(|(v, u)| format!("{v}{u}"))
        .collect()
}

/// Serde helpers that store a `Duration` as whole milliseconds.
pub mod serde_ms {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }

    pub mod option {
        use super::*;
        pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
            match d {
                Some(d) => s.serialize_some(&(d.as_millis() as u64)),
                None => s.serialize_none(),
            }
        }
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
            Ok(Option::<u64>::deserialize(d)?.map(Duration::from_millis))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_forms_users_write() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86_400));
        assert_eq!(
            parse_duration("30d").unwrap(),
            Duration::from_secs(30 * 86_400)
        );
        assert_eq!(
            parse_duration("1h 30m").unwrap(),
            Duration::from_secs(5_400)
        );
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("0s").unwrap(), Duration::ZERO);
    }

    #[test]
    fn the_exact_form_reads_back() {
        for ms in [
            0u64, 1, 999, 1_000, 1_500, 59_000, 60_000, 90_000, 5_400_000, 86_400_000, 93_784_000,
            86_401_000,
        ] {
            let d = Duration::from_millis(ms);
            assert_eq!(
                parse_duration(&format_exact(d)).unwrap(),
                d,
                "{}",
                format_exact(d)
            );
        }
        assert_eq!(format_exact(Duration::from_secs(5_400)), "1h30m");
    }

    #[test]
    fn refuses_bad_input_with_one_line() {
        for bad in [
            "",
            "  ",
            "10",
            "-5s",
            "10x",
            "s",
            "abc",
            "1000000000000000000000d",
            "200y",
        ] {
            let e = parse_duration(bad).unwrap_err().to_string();
            assert!(!e.contains('\n'), "{e}");
            assert!(e.starts_with("invalid duration"), "{e}");
        }
        assert!(parse_positive_duration("0s").is_err());
    }

    #[test]
    fn control_characters_of_the_input_are_escaped() {
        // Caught by the config fuzz target's one-line check (fuzz/regressions/config): a
        // newline inside the quoted input made the error two lines.
        let e = parse_duration("x\ny\r\t").unwrap_err().to_string();
        assert!(!e.contains('\n') && !e.contains('\r'), "{e}");
        assert!(e.starts_with(r"invalid duration 'x\ny\r\t'"), "{e}");
        let e = parse_duration("5µ").unwrap_err().to_string();
        assert!(e.starts_with("invalid duration '5µ'"), "{e}");
    }

    #[test]
    fn formats_compactly() {
        assert_eq!(format_duration(Duration::from_millis(450)), "450ms");
        assert_eq!(format_duration(Duration::from_millis(3_250)), "3.2s");
        assert_eq!(format_duration(Duration::from_secs(30)), "30s");
        assert_eq!(format_duration(Duration::from_secs(125)), "2m 5s");
        assert_eq!(format_duration(Duration::from_secs(7_260)), "2h 1m");
        assert_eq!(format_duration(Duration::from_secs(3_600)), "1h");
        assert_eq!(format_duration(Duration::from_secs(86_400 * 2 + 5)), "2d");
    }
}
