//! The whole configuration file, read exactly as `serve` reads it: `jobward::config::load_str`.
//! Every input gives `Ok` or one `ConfigError` of ONE line; never a panic or a hang.
//!
//! Input: the file's text (a configuration file is UTF-8; other bytes are skipped).

#![no_main]

use jobward::config::{Overrides, load_str};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match load_str("fuzz.toml", text, &Overrides::default()) {
        Ok(settings) => {
            // What was accepted is usable: every job has a valid name and a schedule that
            // describes itself; the server binds somewhere.
            for job in &settings.jobs {
                assert!(jobward_core::validate_name("job name", &job.name).is_ok());
                let _ = job.schedule.describe();
            }
            assert!(settings.server.bind.ip().is_loopback() || !settings.tokens.is_empty());
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(
                !msg.contains('\n'),
                "a config error must be one line, got: {msg:?}"
            );
            assert!(
                msg.starts_with("fuzz.toml"),
                "error does not name the file: {msg:?}"
            );
        }
    }
});
