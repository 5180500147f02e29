//! What `/proc` says about processes: start times (to tell a process from a later one that
//! reused its pid), process groups, and environments. Linux only.

use std::fs;
use std::path::Path;

/// The kernel's boot id; a process recorded under another boot cannot still be running.
pub fn boot_id() -> Option<String> {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_string())
}

/// Fields of `/proc/PID/stat` that identify a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub pid: i32,
    pub state: char,
    pub pgrp: i32,
    /// Start time in clock ticks since boot (field 22): with the pid, unique for a boot.
    pub start_ticks: u64,
}

/// Parses `/proc/PID/stat`. The command name may contain spaces and parentheses, so fields
/// are counted from the last `)`.
pub fn parse_stat(text: &str) -> Option<Stat> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let pid = text[..open].trim().parse().ok()?;
    let rest: Vec<&str> = text[close + 1..].split_whitespace().collect();
    // rest[0] is field 3 (state); field N is rest[N - 3].
    Some(Stat {
        pid,
        state: rest.first()?.chars().next()?,
        pgrp: rest.get(2)?.parse().ok()?,
        start_ticks: rest.get(19)?.parse().ok()?,
    })
}

pub fn stat(pid: i32) -> Option<Stat> {
    parse_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Every live (non-zombie) process whose process group is `pgid`.
pub fn group_members(pgid: i32) -> Vec<Stat> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return vec![];
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
        .filter_map(stat)
        .filter(|s| s.pgrp == pgid && s.state != 'Z')
        .collect()
}

/// Whether the environment of `pid` holds every `NAME=value` pair given.
pub fn environ_has(pid: i32, pairs: &[(&str, &str)]) -> bool {
    let Ok(raw) = fs::read(Path::new("/proc").join(pid.to_string()).join("environ")) else {
        return false;
    };
    pairs.iter().all(|(k, v)| {
        let want = format!("{k}={v}");
        raw.split(|b| *b == 0).any(|entry| entry == want.as_bytes())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_with_spaces_and_parentheses() {
        let s = parse_stat("1234 (my (odd) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 98765 1000 10").unwrap();
        assert_eq!(
            s,
            Stat {
                pid: 1234,
                state: 'S',
                pgrp: 1234,
                start_ticks: 98765
            }
        );
    }

    #[test]
    fn reads_this_process() {
        let me = stat(std::process::id() as i32).unwrap();
        assert_eq!(me.pid, std::process::id() as i32);
        assert!(me.start_ticks > 0);
        assert!(boot_id().is_some());
        assert!(group_members(me.pgrp).iter().any(|s| s.pid == me.pid));
    }
}
