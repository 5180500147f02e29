//! `jobward exec --job NAME -- CMD ARGS…`: a run started by something else (system cron, a
//! CronJob, CI), recorded in the ledger like any other. The command runs in its own process
//! group under jobward's supervisor (it dies with the wrapper), its lease is held with
//! heartbeats, its run timeout and a cancel are honoured, and its exit code is passed
//! through. Monitoring must never stop the job: with no ledger reachable the command still
//! runs, unrecorded, and stderr says so.

use std::time::Duration;

use axum::http::Method;
use jobward_exec::{Ending, Exit, Launch, Stop};
use jobward_protocol::*;
use tokio::sync::mpsc;

use crate::api::{Api, enc};
use crate::commands::R;
use crate::{Cli, ExecArgs, Failure};

/// A word for `sh -c`, quoted so that the shell passes it through unchanged.
fn quote(arg: &str) -> String {
    if !arg.is_empty()
        && arg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b))
    {
        return arg.to_string();
    }
    format!("'{}'", arg.replace('\'', r"'\''"))
}

fn warn(what: impl std::fmt::Display) {
    eprintln!("jobward exec: {what}");
}

/// The exit status of the wrapper: the command's code, or 128 + its signal, as a shell says.
fn passthrough(exit: Exit) -> R {
    let code = match exit {
        Exit::Code(0) => return Ok(()),
        Exit::Code(c) => c.clamp(1, 255) as u8,
        Exit::Signal(s) => (128 + s).clamp(1, 255) as u8,
    };
    Err(Failure::Code(code))
}

/// Where the run is recorded, once it started there.
struct Recorded {
    api: Api,
    start: ExternalStartResponse,
    run_timeout: Option<Duration>,
    kill_grace: Duration,
}

async fn record_start(cli: &Cli, a: &ExecArgs) -> Option<Recorded> {
    let api = match Api::open(cli, &a.server).await {
        Ok(api) => api,
        Err(e) => {
            warn(format!(
                "cannot record this run ({}); running the command anyway",
                failure_text(&e)
            ));
            return None;
        }
    };
    let req = ExternalStartRequest {
        host: Some(jobward_server::default_node_name()),
        user: std::env::var("USER").ok(),
        pid: Some(std::process::id() as i32),
    };
    let start: ExternalStartResponse = match api
        .send(
            Method::POST,
            &format!("/api/jobs/{}/start", enc(&a.job)),
            &req,
        )
        .await
    {
        Ok(s) => s,
        Err(e) => {
            warn(format!(
                "cannot record this run at {} ({}); running the command anyway",
                api.base(),
                failure_text(&e)
            ));
            return None;
        }
    };
    let job: Option<JobDetail> = api.get(&format!("/api/jobs/{}", enc(&a.job))).await.ok();
    let run_timeout = job
        .as_ref()
        .map(|d| Duration::from_millis(d.job.run_timeout_ms));
    let kill_grace = job
        .as_ref()
        .and_then(|d| d.definition.kill_grace.as_deref())
        .and_then(|g| jobward_core::duration::parse_duration(g).ok())
        .unwrap_or(Duration::from_secs(10));
    Some(Recorded {
        api,
        start,
        run_timeout,
        kill_grace,
    })
}

fn failure_text(f: &Failure) -> String {
    match f {
        Failure::Input(m) | Failure::Check(m) => m.clone(),
        Failure::Quiet | Failure::Code(_) => "refused".into(),
    }
}

pub async fn exec(cli: &Cli, a: &ExecArgs) -> R {
    if a.command.is_empty() {
        return Err(Failure::Input(
            "give the command after --: jobward exec --job NAME -- CMD ARGS".into(),
        ));
    }
    jobward_core::validate_name("job name", &a.job)
        .map_err(|e| Failure::Input(format!("--job: {e}")))?;
    let command = format!(
        "exec {}",
        a.command
            .iter()
            .map(|w| quote(w))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let rec = record_start(cli, a).await;
    if let Some(r) = &rec
        && !r.start.started
    {
        let e = &r.start.execution;
        eprintln!(
            "skipped: job '{}' run #{} (execution {}): {}; the command was not run",
            a.job,
            e.number,
            e.id,
            e.message
                .as_deref()
                .unwrap_or("its overlap policy skipped it")
        );
        return Err(Failure::Code(crate::ledger::EXIT_SKIPPED));
    }
    let id = rec.as_ref().map(|r| r.start.execution.id);
    // The log: beside the ledger's other logs when this process writes the ledger itself,
    // else a file of its own that the record's log tail is taken from.
    let log_path = match rec.as_ref().and_then(|r| r.api.local_settings()) {
        Some(s) => jobward_server::log_path(&s.server.log_dir, &a.job, id.unwrap_or(0)),
        None => {
            std::env::temp_dir().join(format!("jobward-exec-{}-{}.log", a.job, std::process::id()))
        }
    };
    let mut env = vec![("JOBWARD_JOB".to_string(), a.job.clone())];
    if let Some(r) = &rec {
        env.push((
            "JOBWARD_EXECUTION_ID".into(),
            r.start.execution.id.to_string(),
        ));
        env.push(("JOBWARD_ATTEMPT".into(), r.start.attempt.to_string()));
        if let Some(t) = &r.start.lease_token {
            env.push(("JOBWARD_LEASE_TOKEN".into(), t.clone()));
        }
        if let Api::Server(c) = &r.api {
            env.push(("JOBWARD_SERVER_URL".into(), c.base().to_string()));
        }
    }
    let launch = Launch {
        command,
        env,
        log_path: log_path.clone(),
        log_max_bytes: 1 << 20,
        cwd: None,
        echo: true,
    };
    let running = match jobward_exec::spawn(&launch) {
        Ok(r) => r,
        Err(e) => {
            warn(format!("cannot start the command: {e}"));
            if let Some(r) = &rec {
                complete(
                    r,
                    Outcome::Failed,
                    None,
                    None,
                    Some(format!("could not start: {e}")),
                    None,
                )
                .await;
            }
            return Err(Failure::Code(127));
        }
    };
    let (stop_tx, stop_rx) = mpsc::unbounded_channel::<Stop>();
    let (why_tx, mut why_rx) = mpsc::unbounded_channel::<&'static str>();
    let beat = rec.as_ref().map(|r| {
        let api_start = (
            r.start.execution.id,
            r.start.attempt,
            r.start.lease_token.clone(),
        );
        let every = Duration::from_millis(r.start.heartbeat_interval_ms.max(100));
        (api_start, every)
    });
    let terminate_at = rec
        .as_ref()
        .and_then(|r| r.run_timeout)
        .map(|t| tokio::time::Instant::now() + t);
    let grace = rec
        .as_ref()
        .map(|r| r.kill_grace)
        .unwrap_or(Duration::from_secs(10));
    let supervise = running.supervise(terminate_at, grace, stop_rx);
    tokio::pin!(supervise);
    let mut ticker = tokio::time::interval(
        beat.as_ref()
            .map(|(_, every)| *every)
            .unwrap_or(Duration::from_secs(3600)),
    );
    ticker.tick().await;
    let finished = loop {
        tokio::select! {
            f = &mut supervise => break f,
            _ = ticker.tick(), if beat.is_some() => {
                let (Some(r), Some(((id, attempt, token), _))) = (&rec, &beat) else { continue };
                let req = LeaseHeartbeatRequest {
                    attempt: *attempt,
                    lease_token: token.clone().unwrap_or_default(),
                };
                let answer: R<HeartbeatResponse> = r
                    .api
                    .send(Method::POST, &format!("/api/executions/{id}/heartbeat"), &req)
                    .await;
                match answer {
                    Ok(h) if !h.cancel.is_empty() => {
                        let _ = why_tx.send("cancel");
                        let _ = stop_tx.send(Stop::Graceful);
                    }
                    Ok(_) => {}
                    // The ledger ended this run (its lease expired while the server was out
                    // of reach, or a cleanup settled it): nothing may run on as ended.
                    Err(Failure::Check(m)) if m.contains("lease lost") => {
                        warn(format!("{m}; stopping the command"));
                        let _ = why_tx.send("lease lost");
                        let _ = stop_tx.send(Stop::Immediate);
                    }
                    Err(e) => warn(format!("heartbeat not recorded ({}); still running", failure_text(&e))),
                }
            }
        }
    };
    let why = why_rx.try_recv().ok();
    let tail = jobward_exec::log::read_tail(&log_path, 64 * 1024)
        .ok()
        .flatten();
    if rec.as_ref().and_then(|r| r.api.local_settings()).is_none() {
        let _ = std::fs::remove_file(&log_path);
    }
    let (code, signal) = match finished.exit {
        Exit::Code(c) => (Some(c), None),
        Exit::Signal(s) => (None, Some(s)),
    };
    if let Some(r) = &rec
        && why != Some("lease lost")
    {
        let (outcome, error) = match finished.ending {
            Ending::RunTimeout => (
                Outcome::TimedOut,
                Some("jobward exec stopped it at its run timeout".to_string()),
            ),
            Ending::Stopped(_) if why == Some("cancel") => (
                Outcome::Cancelled,
                Some("cancelled: the command was stopped".to_string()),
            ),
            _ if finished.exit.success() => (Outcome::Completed, None),
            _ => (Outcome::Failed, None),
        };
        complete(r, outcome, code, signal, error, tail).await;
    }
    passthrough(finished.exit)
}

async fn complete(
    r: &Recorded,
    outcome: Outcome,
    exit_code: Option<i32>,
    signal: Option<i32>,
    error: Option<String>,
    log_tail: Option<String>,
) {
    let id = r.start.execution.id;
    let report = CompletionReport {
        id,
        attempt: r.start.attempt,
        lease_token: r.start.lease_token.clone().unwrap_or_default(),
        outcome,
        exit_code,
        signal,
        error,
        log_tail,
    };
    // The end is worth a few tries: without it the run is settled at its lease's expiry.
    for attempt in 0..3 {
        let done: R<CompleteResponse> = r
            .api
            .send(
                Method::POST,
                &format!("/api/executions/{id}/complete"),
                &report,
            )
            .await;
        match done {
            Ok(_) => return,
            Err(e) if attempt == 2 => warn(format!(
                "the end of execution {id} was not recorded ({}); the ledger settles it when its lease expires",
                failure_text(&e)
            )),
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::quote;

    #[test]
    fn words_reach_the_command_unchanged() {
        assert_eq!(quote("ls"), "ls");
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(quote(""), "''");
        assert_eq!(quote("$HOME"), "'$HOME'");
    }
}
