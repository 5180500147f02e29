//! Tables and JSON for the CLI, written so that a closed pipe (`jobward runs list | head -1`)
//! ends the command quietly.

use std::io::Write;
use std::time::Duration;

use comfy_table::presets::NOTHING;
use comfy_table::{Cell, ContentArrangement, Table};
use jobward_core::duration::format_duration;
use jobward_core::{Timestamp, deadline};
use jobward_protocol::ExecutionView;
use serde::Serialize;

/// `println!` that ends the command quietly when stdout is a closed pipe.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::output::write_line(format_args!($($arg)*))
    };
}
pub(crate) use outln;

pub fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(header.iter().map(|h| Cell::new(*h)));
    t
}

/// `2026-11-22 21:03:04Z`.
pub fn time(t: Option<Timestamp>) -> String {
    t.map(|t| t.format("%Y-%m-%d %H:%M:%SZ").to_string())
        .unwrap_or_else(|| "-".into())
}

/// `4.1s ago`, `in 3m`.
pub fn ago(now: Timestamp, t: Option<Timestamp>) -> String {
    match t {
        None => "-".into(),
        Some(t) if t <= now => format!("{} ago", format_duration(deadline::between(t, now))),
        Some(t) => format!("in {}", format_duration(deadline::between(now, t))),
    }
}

pub fn dur(d: Option<Duration>) -> String {
    d.map(format_duration).unwrap_or_else(|| "-".into())
}

/// The `runs list` table.
pub fn runs_table(rows: &[ExecutionView], now: Timestamp) -> String {
    let mut t = table(&[
        "ID",
        "JOB",
        "RUN",
        "ATTEMPT",
        "STATUS",
        "STARTED",
        "FINISHED",
        "RUNTIME",
        "LAST HEARTBEAT",
        "REASON",
    ]);
    for e in rows {
        t.add_row(vec![
            e.id.to_string(),
            e.job.clone(),
            format!("#{}", e.number),
            format!("{}/{}", e.attempt, e.max_attempts),
            e.status_text.clone(),
            time(e.started_at),
            time(e.finished_at),
            dur(e.runtime_ms.map(Duration::from_millis)),
            if e.status == jobward_protocol::Status::Running {
                ago(now, e.heartbeat_at)
            } else {
                "-".into()
            },
            e.reason.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    t.to_string()
}

pub fn print_json<T: Serialize>(v: &T) {
    outln!("{}", serde_json::to_string_pretty(v).expect("serialisable"));
}

/// Writes one line to stdout. A reader that went away (a closed pipe) ends the command at
/// once with exit 0, as `head` expects; any other write error is one line and exit 1.
pub fn write_line(args: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    let written = out
        .write_fmt(args)
        .and_then(|_| out.write_all(b"\n"))
        .and_then(|_| out.flush());
    if let Err(e) = written {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        let _ = writeln!(
            std::io::stderr(),
            "jobward: error: cannot write output: {e}"
        );
        std::process::exit(1);
    }
}

/// A database that could not be opened, said plainly: which one (without its password) and
/// why, not the connection pool's words. When the pool only says it timed out, the server's
/// address is tried once more to tell a refused connection from a silent one.
pub fn open_error(url: &str, message: &str) -> String {
    let lower = message.to_lowercase();
    let why = if lower.contains("timed out") {
        match probe(url) {
            Some(why) => why,
            None => "nothing answered within 5s (is the database server running, and reachable from here?)"
                .to_string(),
        }
    } else if lower.contains("connection refused") {
        "connection refused (is the database server running, on that host and port?)".to_string()
    } else {
        message
            .trim_start_matches("error communicating with database: ")
            .trim_start_matches("error returned from database: ")
            .to_string()
    };
    format!("cannot open database {url}: {why}")
}

/// Why a PostgreSQL server at the URL's host and port does not answer, as a TCP connection
/// attempt sees it.
fn probe(url: &str) -> Option<String> {
    use std::net::ToSocketAddrs;
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?']).next()?;
    let host_port = authority
        .rsplit_once('@')
        .map(|(_, h)| h)
        .unwrap_or(authority);
    if host_port.is_empty() {
        return None;
    }
    let target = if host_port.starts_with('[') || host_port.matches(':').count() == 1 {
        host_port.to_string()
    } else {
        format!("{host_port}:5432")
    };
    let addrs: Vec<_> = match target.to_socket_addrs() {
        Ok(a) => a.collect(),
        Err(e) => return Some(format!("cannot resolve {target}: {e}")),
    };
    let addr = addrs.first()?;
    Some(
        match std::net::TcpStream::connect_timeout(addr, Duration::from_secs(2)) {
            Ok(_) => {
                format!("{target} accepts connections but did not answer as PostgreSQL within 5s")
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => format!(
                "connection refused by {target} (is PostgreSQL running there, on that port?)"
            ),
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                format!("nothing answered at {target} (a firewall, or the wrong host?)")
            }
            Err(e) => format!("cannot connect to {target}: {e}"),
        },
    )
}

pub use jobward_server::views::NodeNames as Names;
