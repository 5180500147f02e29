//! Every JSON request body of the HTTP API and the worker protocol, sent through the real
//! axum router (`jobward_server::http::app`) against a real SQLite ledger in a temporary
//! directory, opened once per fuzz process (and opened afresh every `RESET_EVERY` inputs so
//! the ledger stays small). No tokens are configured: loopback access is open.
//!
//! Properties: no panic, no 5xx other than 503, and every error response is the JSON error
//! shape `{"error":{"code":..,"message":..}}` with a one-line message.
//!
//! Input:
//!   byte 0   endpoint (index into `ENDPOINTS`, modulo its length)
//!   byte 1   bits 0-1: method (0/1: the endpoint's own, 2: the other of GET/POST, 3: PUT)
//!            bits 2-4: Content-Type (see `content_type`)
//!            bits 5-7: path parameter: an id (0-2: the last claimed execution, 3: 1,
//!            4: 0, 5: -1, 6: i64::MAX) or a job name (`JOB_NAMES`); 7 takes it from the
//!            input. For a claim (no parameter): bit 5 queues an execution first, bit 6
//!            picks its job
//!   byte 2   (only when bits 5-7 are 7) length N of the path parameter, then N bytes of it
//!   rest     the request body (for GET endpoints that take a query: the query string)
//!
//! In the body, `EXEC_ID`, `ATTEMPT_NO` and `LEASE_TOKEN` are replaced by the id, attempt
//! and lease token of the execution most recently claimed through the API, so that
//! heartbeats, completions, releases and progress reports can hold a real lease. A claim whose `wait_ms` would make it
//! long-poll has it cut to under 20 ms (the long poll itself is not what is fuzzed here).

#![no_main]

use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use jobward_core::{JobSpec, Overlap};
use jobward_server::http::{AppState, Tokens, app};
use jobward_store::{DynStore, OpenMode, SyncJobs, TriggerParams};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tower::ServiceExt;

/// Inputs served by one ledger before a fresh one is opened.
const RESET_EVERY: u64 = 20_000;
/// Longest any request may take before it counts as a hang (claims long-poll at most ~20 ms
/// here; the router's own timeout is 60 s).
const HANG_AFTER: Duration = Duration::from_secs(20);

#[derive(Clone, Copy, PartialEq)]
enum Param {
    None,
    Id,
    Name,
}

/// (method, path with `{}` for its parameter, parameter kind, body is a query string)
const ENDPOINTS: &[(&str, &str, Param, bool)] = &[
    ("POST", "/api/jobs/{}/trigger", Param::Name, false),
    (
        "POST",
        "/api/system/cleanup/stale-executions",
        Param::None,
        false,
    ),
    ("POST", "/api/worker/claim", Param::None, false),
    ("POST", "/api/worker/heartbeat", Param::None, false),
    ("POST", "/api/worker/complete", Param::None, false),
    ("POST", "/api/worker/release", Param::None, false),
    ("POST", "/api/executions/{}/progress", Param::Id, false),
    ("POST", "/api/executions/{}/cancel", Param::Id, false),
    ("POST", "/api/jobs/{}/pause", Param::Name, false),
    ("POST", "/api/jobs/{}/resume", Param::Name, false),
    ("POST", "/api/system/reload", Param::None, false),
    ("GET", "/api/executions", Param::None, true),
    ("GET", "/api/executions/{}", Param::Id, false),
    ("GET", "/api/executions/{}/events", Param::Id, false),
    ("GET", "/api/executions/{}/log", Param::Id, true),
    ("GET", "/api/jobs/{}", Param::Name, false),
    ("GET", "/api/jobs", Param::None, false),
    ("GET", "/api/system/health", Param::None, false),
    ("GET", "/api/system/executions/running", Param::None, false),
    ("GET", "/api/nowhere/{}", Param::Name, false),
];

/// The ledger's jobs: every overlap policy, local and remote, one concurrency limit.
fn jobs() -> SyncJobs {
    let mut local = JobSpec::new("local", "true");
    local.overlap = Overlap::Allow;
    let mut remote = JobSpec::new("remote", "true");
    remote.queue = Some("q1".into());
    remote.overlap = Overlap::Allow;
    let mut replace = JobSpec::new("replace", "true");
    replace.queue = Some("q1".into());
    replace.overlap = Overlap::Replace;
    let mut skip = JobSpec::new("skip", "true");
    skip.queue = Some("q2".into());
    skip.overlap = Overlap::Skip;
    let mut queue = JobSpec::new("queue", "true");
    queue.queue = Some("q2".into());
    queue.overlap = Overlap::Queue;
    queue.concurrency_key = Some("slot".into());
    queue.retry.max_attempts = 3;
    SyncJobs {
        jobs: vec![local, remote, replace, skip, queue],
        limits: [("slot".to_string(), 1)].into(),
    }
}

const JOB_NAMES: &[&str] = &["local", "remote", "replace", "skip", "queue", "nope"];

struct Ledger {
    dir: std::path::PathBuf,
    store: DynStore,
    router: Router,
}

struct Harness {
    rt: tokio::runtime::Runtime,
    ledger: Option<Ledger>,
    served: u64,
    /// (id, attempt, lease token) of the execution most recently claimed.
    claimed: Option<(i64, u32, String)>,
}

/// Ledger directories are named after the fuzz process; those of dead processes are removed.
fn clean_stale_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(pid) = name
            .strip_prefix("jobward-fuzz-api-")
            .and_then(|rest| rest.split('-').next())
            && !std::path::Path::new(&format!("/proc/{pid}")).exists()
        {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

impl Harness {
    fn open(&mut self) {
        if let Some(old) = self.ledger.take() {
            let _in_runtime = self.rt.enter();
            drop(old.router);
            drop(old.store);
            let _ = std::fs::remove_dir_all(&old.dir);
        }
        let dir = std::env::temp_dir().join(format!(
            "jobward-fuzz-api-{}-{}",
            std::process::id(),
            self.served
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let url = format!("sqlite://{}", dir.join("ledger.db").display());
        let store = self.rt.block_on(async {
            let (store, _) = jobward_store::open(&url, OpenMode::CreateAndMigrate)
                .await
                .expect("open the fuzz ledger");
            store.sync_jobs(jobs()).await.expect("sync the fuzz jobs");
            store
        });
        let state = AppState::new(store.clone(), Tokens::default(), dir.join("logs"));
        self.ledger = Some(Ledger {
            dir,
            store,
            router: app(state),
        });
        self.claimed = None;
    }
}

fn harness() -> &'static Mutex<Harness> {
    static H: OnceLock<Mutex<Harness>> = OnceLock::new();
    H.get_or_init(|| {
        clean_stale_dirs();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut h = Harness {
            rt,
            ledger: None,
            served: 0,
            claimed: None,
        };
        h.open();
        Mutex::new(h)
    })
}

fn content_type(bits: u8) -> Option<&'static str> {
    match bits {
        0..=3 => Some("application/json"),
        4 => None,
        5 => Some("text/plain"),
        6 => Some("application/json; charset=utf-8"),
        _ => Some("application/problem+json"),
    }
}

/// Bytes as one URI path segment or query: unreserved bytes as they are, the rest escaped.
fn encode(bytes: &[u8], query: bool) -> String {
    let mut out = String::new();
    for &b in bytes {
        if b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'.' | b'_' | b'~' | b':' | b',')
            || (query && matches!(b, b'=' | b'&' | b'+'))
        {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn replace_all(body: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len());
    let mut i = 0;
    while i < body.len() {
        if body[i..].starts_with(from) {
            out.extend_from_slice(to);
            i += from.len();
        } else {
            out.push(body[i]);
            i += 1;
        }
    }
    out
}

/// A claim that would long-poll waits under 20 ms instead (same JSON otherwise).
fn short_wait(body: Vec<u8>) -> Vec<u8> {
    let Ok(mut v) = serde_json::from_slice::<Value>(&body) else {
        return body;
    };
    let Some(w) = v.get("wait_ms").and_then(Value::as_u64) else {
        return body;
    };
    if (20..=30_000).contains(&w) {
        v["wait_ms"] = Value::from(w % 20);
        return v.to_string().into_bytes();
    }
    body
}

fn check_response(what: &str, status: StatusCode, bytes: &[u8]) {
    assert!(
        !status.is_server_error() || status == StatusCode::SERVICE_UNAVAILABLE,
        "{what}: server error {status}: {}",
        String::from_utf8_lossy(bytes)
    );
    if !(status.is_client_error() || status.is_server_error()) {
        return;
    }
    let v: Value = serde_json::from_slice(bytes).unwrap_or_else(|e| {
        panic!(
            "{what}: {status} with a body that is not JSON ({e}): {:?}",
            String::from_utf8_lossy(bytes)
        )
    });
    let code = v["error"]["code"].as_str();
    let message = v["error"]["message"].as_str();
    let (Some(code), Some(message)) = (code, message) else {
        panic!("{what}: {status} without the error shape: {v}");
    };
    assert!(!code.is_empty(), "{what}: {status} with an empty code: {v}");
    assert!(
        !message.contains('\n'),
        "{what}: {status} with a multi-line message: {message:?}"
    );
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let (ep, flags) = (data[0], data[1]);
    let (method, path, param, query) = ENDPOINTS[ep as usize % ENDPOINTS.len()];
    let mut rest = &data[2..];
    let mut h = harness().lock().unwrap_or_else(|p| p.into_inner());
    h.served += 1;
    if h.served % RESET_EVERY == 0 {
        h.open();
    }
    let claimed_id = h.claimed.as_ref().map(|c| c.0).unwrap_or(1);
    let param_text = match (param, flags >> 5) {
        (Param::None, _) => String::new(),
        (_, 7) => {
            let n = rest.first().copied().unwrap_or(0) as usize;
            let seg = &rest[1.min(rest.len())..(1 + n).min(rest.len())];
            rest = &rest[(1 + n).min(rest.len())..];
            encode(seg, false)
        }
        (Param::Id, k) => match k {
            0..=2 => claimed_id.to_string(),
            3 => "1".into(),
            4 => "0".into(),
            5 => "-1".into(),
            _ => i64::MAX.to_string(),
        },
        (Param::Name, k) => JOB_NAMES[k as usize % JOB_NAMES.len()].to_string(),
    };
    let method = match flags & 3 {
        0 | 1 => Method::from_bytes(method.as_bytes()).unwrap(),
        2 if method == "GET" => Method::POST,
        2 => Method::GET,
        _ => Method::PUT,
    };
    let mut body = rest.to_vec();
    if let Some((id, attempt, token)) = &h.claimed {
        body = replace_all(&body, b"EXEC_ID", id.to_string().as_bytes());
        body = replace_all(&body, b"LEASE_TOKEN", token.as_bytes());
        body = replace_all(&body, b"ATTEMPT_NO", attempt.to_string().as_bytes());
    }
    if path == "/api/worker/claim" {
        body = short_wait(body);
    }
    let mut uri = path.replace("{}", &param_text);
    let mut req = Request::builder().method(method.clone());
    if query {
        if !body.is_empty() {
            uri = format!("{uri}?{}", encode(&body, true));
        }
        body.clear();
    }
    req = req.uri(&uri);
    if let Some(ct) = content_type((flags >> 2) & 7) {
        req = req.header(header::CONTENT_TYPE, ct);
    }
    let what = format!("{method} {uri}");
    let Ok(req) = req.body(Body::from(body)) else {
        return;
    };

    let h = &mut *h;
    let ledger = h.ledger.as_ref().unwrap();
    let router = ledger.router.clone();
    let store = ledger.store.clone();
    let (status, bytes) = h.rt.block_on(async {
        // Half the claims find work: a remote execution queued just before.
        if path == "/api/worker/claim" && flags & 0x20 != 0 {
            let _ = store
                .trigger(TriggerParams {
                    job: if flags & 0x40 != 0 { "remote" } else { "queue" }.into(),
                    actor: "fuzz".into(),
                    ..Default::default()
                })
                .await;
        }
        let resp = tokio::time::timeout(HANG_AFTER, router.oneshot(req))
            .await
            .unwrap_or_else(|_| panic!("{what}: no answer within {HANG_AFTER:?}"))
            .unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 64 << 20)
            .await
            .unwrap_or_else(|e| panic!("{what}: the body could not be read: {e}"));
        (status, bytes)
    });
    check_response(&what, status, &bytes);
    if path == "/api/worker/claim"
        && status == StatusCode::OK
        && let Ok(v) = serde_json::from_slice::<Value>(&bytes)
        && let Some(e) = v["executions"].as_array().and_then(|a| a.last())
        && let (Some(id), Some(attempt), Some(token)) = (
            e["id"].as_i64(),
            e["attempt"].as_u64(),
            e["lease_token"].as_str(),
        )
    {
        h.claimed = Some((id, attempt as u32, token.to_string()));
    }
});
