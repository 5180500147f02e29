//! Execution traces over OTLP/HTTP: a small receiver here accepts `POST /v1/traces`
//! (protobuf), and the real binary (a node and a remote worker) exports to it.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;

/// Spans received, with the request paths they came on.
#[derive(Default)]
struct Received {
    spans: Vec<Span>,
    paths: Vec<String>,
    services: Vec<String>,
}

fn receiver() -> (String, Arc<Mutex<Received>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let got = Arc::new(Mutex::new(Received::default()));
    let store = got.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let store = store.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut conn = conn;
                loop {
                    let mut request_line = String::new();
                    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
                        return;
                    }
                    let mut length = 0usize;
                    loop {
                        let mut h = String::new();
                        if reader.read_line(&mut h).unwrap_or(0) == 0 {
                            return;
                        }
                        let h = h.trim_end();
                        if h.is_empty() {
                            break;
                        }
                        if let Some((k, v)) = h.split_once(':')
                            && k.eq_ignore_ascii_case("content-length")
                        {
                            length = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0u8; length];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    let path = request_line
                        .split_whitespace()
                        .nth(1)
                        .unwrap_or_default()
                        .to_string();
                    if let Ok(req) = ExportTraceServiceRequest::decode(body.as_slice()) {
                        let mut g = store.lock().unwrap();
                        g.paths.push(path);
                        for rs in req.resource_spans {
                            for kv in rs.resource.iter().flat_map(|r| r.attributes.iter()) {
                                if kv.key == "service.name" {
                                    g.services.push(format!("{:?}", kv.value));
                                }
                            }
                            for ss in rs.scope_spans {
                                g.spans.extend(ss.spans);
                            }
                        }
                    }
                    let _ = conn.write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n",
                    );
                }
            });
        }
    });
    (url, got)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn attr(s: &Span, key: &str) -> Option<String> {
    s.attributes.iter().find(|kv| kv.key == key).map(|kv| {
        use opentelemetry_proto::tonic::common::v1::any_value::Value;
        match kv.value.as_ref().and_then(|v| v.value.clone()) {
            Some(Value::StringValue(s)) => s,
            Some(Value::IntValue(i)) => i.to_string(),
            other => format!("{other:?}"),
        }
    })
}

/// A retried local job and a remote worker's job: one trace per run number (trigger, queued,
/// run, end), retries linked, and the run's trace context given to each process as
/// TRACEPARENT, by the node and by the worker.
#[test]
fn each_execution_is_a_trace_and_its_process_gets_the_traceparent() {
    let (url, got) = receiver();
    let env = Env::new(
        "",
        &format!(
            r#"
[telemetry]
otlp_endpoint = "{url}"
[[job]]
name = "flaky"
command = "echo $TRACEPARENT > tp-$JOBWARD_ATTEMPT.txt; test $JOBWARD_ATTEMPT = 2"
retry = {{ max_attempts = 2, backoff = "200ms", max_backoff = "1s" }}
[[job]]
name = "remote"
command = "echo $TRACEPARENT > remote-tp.txt"
queue = "q1"
[[job]]
name = "unclaimed"
command = "true"
queue = "nobody"
queue_timeout = "1s"
"#
        ),
    );
    let mut server = env.serve();
    let worker_log = env.path("worker.log");
    let mut worker = std::process::Command::new(BIN)
        .args(["worker", "--server", &server.api(), "--queue", "q1"])
        .arg("--log-dir")
        .arg(env.path("wlogs"))
        .current_dir(env.dir.path())
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .stderr(std::fs::File::create(&worker_log).unwrap())
        .spawn()
        .unwrap();
    let first = env.trigger("flaky");
    let remote = env.trigger("remote");
    let unclaimed = env.trigger("unclaimed");
    env.wait_state(first, "failed", Duration::from_secs(15));
    env.wait_state(remote, "completed", Duration::from_secs(15));
    // Settled by the reaper (queue timeout): its trace is emitted from there.
    env.wait_state(unclaimed, "timed_out", Duration::from_secs(15));
    let until = Instant::now() + Duration::from_secs(15);
    let retry = loop {
        let rows = env.runs(&["--job", "flaky"]);
        if let Some(r) = rows
            .iter()
            .find(|r| r["attempt"] == 2 && r["status"] == "completed")
        {
            break r["id"].as_i64().unwrap();
        }
        assert!(
            Instant::now() < until,
            "the retry never completed: {rows:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(worker.id() as i32),
        Signal::SIGTERM,
    );
    let _ = worker.wait();
    server.signal(Signal::SIGTERM);
    assert_eq!(server.wait(Duration::from_secs(30)), Some(0));

    let g = got.lock().unwrap();
    assert!(g.paths.iter().all(|p| p == "/v1/traces"), "{:?}", g.paths);
    assert!(
        g.services.iter().any(|s| s.contains("jobward")),
        "{:?}",
        g.services
    );
    let of = |trace: &str, name: &str| -> Vec<&Span> {
        g.spans
            .iter()
            .filter(|s| hex(&s.trace_id) == trace && s.name == name)
            .collect()
    };
    // Every node derives the same ids: the trace from the job and run number.
    let flaky_trace = jobward_server::telemetry::trace_id("jobward", "flaky", 1).to_string();
    let remote_trace = jobward_server::telemetry::trace_id("jobward", "remote", 1).to_string();
    assert_ne!(flaky_trace, remote_trace);

    let roots = of(&flaky_trace, "trigger");
    assert_eq!(
        roots.len(),
        1,
        "one root per run number, with its last attempt"
    );
    let root = roots[0];
    assert!(root.parent_span_id.is_empty(), "the root has no parent");
    assert_eq!(attr(root, "jobward.state").as_deref(), Some("completed"));
    assert_eq!(attr(root, "jobward.attempts").as_deref(), Some("2"));
    let queued = of(&flaky_trace, "queued");
    let runs = of(&flaky_trace, "run");
    assert_eq!(
        (queued.len(), runs.len()),
        (2, 2),
        "queued and run per attempt"
    );
    for s in queued.iter().chain(runs.iter()) {
        assert_eq!(
            s.parent_span_id, root.span_id,
            "{} is a child of trigger",
            s.name
        );
        assert!(s.end_time_unix_nano >= s.start_time_unix_nano);
    }
    let run_of = |id: i64| {
        *runs
            .iter()
            .find(|s| attr(s, "jobward.execution_id") == Some(id.to_string()))
            .unwrap_or_else(|| panic!("no run span for execution {id}"))
    };
    let (run1, run2) = (run_of(first), run_of(retry));
    assert_eq!(attr(run1, "jobward.state").as_deref(), Some("failed"));
    assert_eq!(attr(run1, "jobward.reason").as_deref(), Some("exit_code"));
    assert_eq!(attr(run2, "jobward.state").as_deref(), Some("completed"));
    assert!(
        run1.events.iter().any(|e| e.name == "end"),
        "its end is an event"
    );
    assert!(run1.links.is_empty());
    assert_eq!(
        run2.links.len(),
        1,
        "a retry links to the attempt before it"
    );
    assert_eq!(run2.links[0].span_id, run1.span_id);
    assert_eq!(hex(&run2.links[0].trace_id), flaky_trace);
    assert!(
        root.start_time_unix_nano <= queued.iter().map(|s| s.start_time_unix_nano).min().unwrap()
    );
    assert!(root.end_time_unix_nano >= run2.end_time_unix_nano);

    // The process of each attempt got its run span as TRACEPARENT.
    for (file, run) in [("tp-1.txt", run1), ("tp-2.txt", run2)] {
        let tp = std::fs::read_to_string(env.path(file)).unwrap();
        assert_eq!(
            tp.trim(),
            format!("00-{flaky_trace}-{}-01", hex(&run.span_id)),
            "{file}"
        );
    }
    // The remote worker's child too, from the claim response.
    let remote_runs = of(&remote_trace, "run");
    assert_eq!(
        remote_runs.len(),
        1,
        "{:?}",
        g.spans.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    let tp = std::fs::read_to_string(env.path("remote-tp.txt")).unwrap();
    assert_eq!(
        tp.trim(),
        format!("00-{remote_trace}-{}-01", hex(&remote_runs[0].span_id)),
        "the worker passes the claim's traceparent to its child"
    );
    let reaped_trace = jobward_server::telemetry::trace_id("jobward", "unclaimed", 1).to_string();
    let reaped = of(&reaped_trace, "queued");
    assert_eq!(reaped.len(), 1, "the reaper's settlement is traced");
    assert_eq!(attr(reaped[0], "jobward.reason").as_deref(), None);
    assert!(
        reaped[0]
            .events
            .iter()
            .any(|e| e.name == "end" && e.attributes.iter().any(|kv| kv.key == "jobward.reason")),
        "a never-started execution ends on its queued span"
    );
    assert!(of(&reaped_trace, "run").is_empty(), "it never ran");
    assert_eq!(of(&reaped_trace, "trigger").len(), 1);
    let names: HashMap<&str, usize> = g.spans.iter().fold(HashMap::new(), |mut m, s| {
        *m.entry(s.name.as_str()).or_default() += 1;
        m
    });
    assert_eq!(names.get("trigger"), Some(&3), "{names:?}");
}
