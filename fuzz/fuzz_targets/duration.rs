//! Durations as users write them (`parse_duration`, `parse_positive_duration`) and as
//! jobward shows them (`format_duration`), with the round trip where it holds.
//!
//! Input: UTF-8 text to parse. Its first 12 bytes also make a `Duration` (8 bytes of
//! milliseconds, 4 of sub-millisecond nanoseconds) that is formatted and read back.

#![no_main]

use std::time::Duration;

use jobward_core::duration::{
    MAX_DURATION, format_duration, parse_duration, parse_positive_duration,
};
use libfuzzer_sys::fuzz_target;

/// `format_duration` keeps at most two units; what it drops is less than this.
fn resolution(d: Duration) -> Duration {
    let ms = d.as_millis();
    if ms < 1_000 {
        Duration::from_millis(1)
    } else if ms < 60_000 {
        Duration::from_millis(100)
    } else if d.as_secs() < 3_600 {
        Duration::from_secs(1)
    } else if d.as_secs() < 86_400 {
        Duration::from_secs(60)
    } else {
        Duration::from_secs(3_600)
    }
}

/// The formatted form of a valid duration parses back to it, give or take the precision
/// the format drops (never more).
fn round_trip(d: Duration) {
    let text = format_duration(d);
    assert!(
        !text.is_empty() && !text.contains('\n'),
        "{d:?} -> {text:?}"
    );
    let back = parse_duration(&text).unwrap_or_else(|e| panic!("{d:?} formats as {text:?}: {e}"));
    assert!(back <= d, "{d:?} -> {text:?} -> {back:?} grew");
    assert!(
        d - back < resolution(d),
        "{d:?} -> {text:?} -> {back:?} lost more than {:?}",
        resolution(d)
    );
    // A whole number of seconds under a minute, or of milliseconds under a second, is exact.
    if d.subsec_nanos() == 0 && d < Duration::from_secs(60) {
        assert_eq!(back, d, "{d:?} -> {text:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() >= 12 {
        let ms = u64::from_le_bytes(data[..8].try_into().unwrap());
        let ns = u32::from_le_bytes(data[8..12].try_into().unwrap()) % 1_000_000;
        let d = Duration::from_millis(ms) + Duration::from_nanos(ns as u64);
        // Any duration formats without panicking; valid ones round-trip.
        let _ = format_duration(d);
        if d <= MAX_DURATION {
            round_trip(d);
        }
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = parse_duration(text);
    let positive = parse_positive_duration(text);
    match &parsed {
        Ok(d) => {
            assert!(*d <= MAX_DURATION, "{text:?} -> {d:?} is above the maximum");
            assert_eq!(positive.is_ok(), !d.is_zero(), "{text:?}");
            if let Ok(p) = &positive {
                assert_eq!(p, d);
            }
            round_trip(*d);
        }
        Err(e) => {
            assert!(
                positive.is_err(),
                "{text:?}: only the positive parser accepts it"
            );
            let msg = e.to_string();
            assert!(msg.starts_with("invalid duration"), "{msg}");
            // It is quoted in config errors and API responses, which are one line.
            assert!(!msg.contains('\n'), "{msg:?}");
        }
    }
});
