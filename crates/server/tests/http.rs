//! The HTTP surface, driven in-process with `oneshot` against a real SQLite ledger.

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use jobward_core::{JobSpec, Overlap};
use jobward_server::http::{AppState, Role, Token, Tokens, app};
use jobward_store::{DynStore, OpenMode, SyncJobs};
use serde_json::{Value, json};
use tower::ServiceExt;

const READ: &str = "read-token-0123456789";
const OPERATE: &str = "operate-token-0123456789";
const WORKER: &str = "worker-token-0123456789";
const ADMIN: &str = "admin-token-0123456789";

struct Api {
    _dir: tempfile::TempDir,
    store: DynStore,
    router: Router,
    state: AppState,
}

async fn api(tokens: bool) -> Api {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("ledger.db").display());
    let (store, _) = jobward_store::open(&url, OpenMode::CreateAndMigrate)
        .await
        .unwrap();
    let mut remote = JobSpec::new("remote", "true");
    remote.queue = Some("q1".into());
    remote.overlap = Overlap::Allow;
    let mut local = JobSpec::new("local", "true");
    local.overlap = Overlap::Allow;
    let mut handler = JobSpec::new("send-report", "");
    handler.queue = Some("q1".into());
    handler.overlap = Overlap::Allow;
    store
        .sync_jobs(SyncJobs {
            jobs: vec![local, remote, handler],
            limits: Default::default(),
        })
        .await
        .unwrap();
    let tokens = if tokens {
        Tokens(vec![
            Token::new("r", Role::Read, READ),
            Token::new("o", Role::Operate, OPERATE),
            Token::new("w", Role::Worker, WORKER),
            Token::new("a", Role::Admin, ADMIN),
        ])
    } else {
        Tokens::default()
    };
    let state = AppState::new(store.clone(), tokens, dir.path().join("logs"));
    Api {
        _dir: dir,
        store,
        router: app(state.clone()),
        state,
    }
}

impl Api {
    async fn call(
        &self,
        method: Method,
        uri: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        self.raw(method, uri, token, body.map(|b| b.to_string()), true)
            .await
    }

    async fn raw(
        &self,
        method: Method,
        uri: &str,
        token: Option<&str>,
        body: Option<String>,
        json: bool,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        if json && body.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(body.map(Body::from).unwrap_or_else(Body::empty))
            .unwrap();
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 10 << 20)
            .await
            .unwrap();
        let v = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
        (status, v)
    }
}

fn assert_error(status: StatusCode, v: &Value, want_status: StatusCode, want_code: &str) {
    assert_eq!(status, want_status, "{v}");
    assert_eq!(v["error"]["code"], want_code, "{v}");
    let msg = v["error"]["message"].as_str().expect("a message");
    assert!(
        !msg.to_lowercase().contains("sqlite")
            && !msg.contains("SELECT")
            && !msg.contains("executions WHERE"),
        "internals leaked: {msg}"
    );
}

/// Every endpoint, with the role it needs (None: proven by a lease token, no role).
fn endpoints() -> Vec<(Method, &'static str, Option<Role>, Option<Value>)> {
    use Method as M;
    vec![
        (M::GET, "/api/system/health", Some(Role::Read), None),
        (
            M::GET,
            "/api/system/executions/running",
            Some(Role::Read),
            None,
        ),
        (M::GET, "/api/jobs", Some(Role::Read), None),
        (M::GET, "/api/jobs/local", Some(Role::Read), None),
        (M::GET, "/api/executions", Some(Role::Read), None),
        (M::GET, "/api/executions/1", Some(Role::Read), None),
        (M::GET, "/api/executions/1/events", Some(Role::Read), None),
        (M::GET, "/api/executions/1/log", Some(Role::Read), None),
        (M::GET, "/metrics", Some(Role::Read), None),
        (M::GET, "/api/openapi.json", Some(Role::Read), None),
        (M::GET, "/api/nodes", Some(Role::Read), None),
        (M::GET, "/api/system/alerts", Some(Role::Read), None),
        (M::GET, "/api/queues", Some(Role::Read), None),
        (
            M::POST,
            "/api/executions/1/retry",
            Some(Role::Operate),
            None,
        ),
        (
            M::POST,
            "/api/jobs/local/start",
            Some(Role::Operate),
            Some(json!({"host": "h", "user": "u"})),
        ),
        (
            M::PATCH,
            "/api/executions/1",
            Some(Role::Operate),
            Some(json!({"delay": "1m"})),
        ),
        (
            M::POST,
            "/api/jobs/local/backfill",
            Some(Role::Operate),
            Some(json!({"from": "2026-01-01T00:00:00Z", "to": "2026-01-01T01:00:00Z"})),
        ),
        (
            M::PUT,
            "/api/jobs/local",
            Some(Role::Admin),
            Some(json!({"queue": "q9"})),
        ),
        (
            M::PATCH,
            "/api/jobs/local",
            Some(Role::Admin),
            Some(json!({"priority": 1})),
        ),
        (M::DELETE, "/api/jobs/local", Some(Role::Admin), None),
        (
            M::POST,
            "/api/system/cleanup/stale-executions",
            Some(Role::Operate),
            Some(json!({})),
        ),
        (M::POST, "/api/system/reload", Some(Role::Operate), None),
        (
            M::POST,
            "/api/jobs/local/trigger",
            Some(Role::Operate),
            Some(json!({})),
        ),
        (
            M::POST,
            "/api/triggers",
            Some(Role::Operate),
            Some(json!({"triggers": []})),
        ),
        (M::POST, "/api/jobs/local/pause", Some(Role::Operate), None),
        (M::POST, "/api/jobs/local/resume", Some(Role::Operate), None),
        (
            M::POST,
            "/api/executions/1/cancel",
            Some(Role::Operate),
            None,
        ),
        (
            M::POST,
            "/api/worker/claim",
            Some(Role::Worker),
            Some(json!({"worker_id": "w", "queues": ["q1"], "batch": 1})),
        ),
        (
            M::POST,
            "/api/worker/heartbeat",
            Some(Role::Worker),
            Some(json!({"worker_id": "w", "leases": []})),
        ),
        (
            M::POST,
            "/api/worker/complete",
            Some(Role::Worker),
            Some(
                json!({"worker_id": "w", "id": 1, "attempt": 1, "lease_token": "x", "outcome": "completed"}),
            ),
        ),
        (
            M::POST,
            "/api/worker/release",
            Some(Role::Worker),
            Some(json!({"worker_id": "w", "leases": []})),
        ),
        (
            M::POST,
            "/api/worker/complete-batch",
            Some(Role::Worker),
            Some(json!({"worker_id": "w", "completions": []})),
        ),
        (
            M::POST,
            "/api/worker/exchange",
            Some(Role::Worker),
            Some(json!({"worker_id": "w", "completions": [], "queues": ["q1"], "batch": 1})),
        ),
    ]
}

#[tokio::test]
async fn every_endpoint_refuses_a_missing_or_wrong_role_token() {
    let api = api(true).await;
    api.store
        .trigger(jobward_store::TriggerParams {
            job: "local".into(),
            actor: "t".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    for (method, uri, needs, body) in endpoints() {
        let needs = needs.unwrap();
        let (s, v) = api.call(method.clone(), uri, None, body.clone()).await;
        assert_error(s, &v, StatusCode::UNAUTHORIZED, "unauthorized");
        let (s, v) = api
            .call(
                method.clone(),
                uri,
                Some("not-a-valid-token-at-all"),
                body.clone(),
            )
            .await;
        assert_error(s, &v, StatusCode::UNAUTHORIZED, "unauthorized");
        for (token, role) in [
            (READ, Role::Read),
            (OPERATE, Role::Operate),
            (ADMIN, Role::Admin),
            (WORKER, Role::Worker),
        ] {
            // The role table: admin includes operate, which includes read; worker stands alone.
            let allowed = match needs {
                Role::Read => role != Role::Worker,
                Role::Operate => matches!(role, Role::Operate | Role::Admin),
                other => role == other,
            };
            let (s, v) = api
                .call(method.clone(), uri, Some(token), body.clone())
                .await;
            if allowed {
                assert_ne!(s, StatusCode::UNAUTHORIZED, "{method} {uri} as {role}: {v}");
                assert_ne!(s, StatusCode::FORBIDDEN, "{method} {uri} as {role}: {v}");
            } else {
                assert_error(s, &v, StatusCode::FORBIDDEN, "forbidden");
            }
        }
    }
    // The progress endpoint is proven by the execution's lease token, not a role.
    let (s, v) = api
        .call(
            Method::POST,
            "/api/executions/1/progress",
            None,
            Some(json!({"attempt": 1, "lease_token": "forged", "progress": 0.5})),
        )
        .await;
    assert_error(s, &v, StatusCode::CONFLICT, "lease_lost");
}

#[tokio::test]
async fn without_tokens_everything_is_open_on_loopback() {
    let api = api(false).await;
    let (s, v) = api.call(Method::GET, "/api/jobs", None, None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["jobs"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn malformed_requests_get_4xx_in_one_shape_and_change_nothing() {
    let api = api(false).await;
    // (method, uri, body, send as JSON, expected status, expected code)
    type Case = (
        Method,
        &'static str,
        Option<String>,
        bool,
        StatusCode,
        &'static str,
    );
    let cases: Vec<Case> = vec![
        (Method::POST, "/api/worker/claim", Some("{not json".into()), true, StatusCode::BAD_REQUEST, "invalid_json"),
        (Method::POST, "/api/worker/claim", Some(r#"{"worker_id":"w","queues":["q1"],"batch":1,"bogus":1}"#.into()), true, StatusCode::BAD_REQUEST, "invalid_json"),
        (Method::POST, "/api/worker/claim", Some(r#"{"worker_id":"w","queues":"q1","batch":1}"#.into()), true, StatusCode::BAD_REQUEST, "invalid_json"),
        (Method::POST, "/api/worker/claim", Some(r#"{"worker_id":"w","queues":["q1"],"batch":-1}"#.into()), true, StatusCode::BAD_REQUEST, "invalid_json"),
        (Method::POST, "/api/worker/claim", Some(r#"{"worker_id":"w","queues":["q1"],"batch":0}"#.into()), true, StatusCode::BAD_REQUEST, "bad_request"),
        (Method::POST, "/api/worker/claim", Some(r#"{"worker_id":"w","queues":["local"],"batch":1}"#.into()), true, StatusCode::BAD_REQUEST, "bad_request"),
        (Method::POST, "/api/worker/claim", Some(r#"{"worker_id":"w","queues":["q1"],"batch":1}"#.into()), false, StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
        (Method::POST, "/api/worker/claim", Some(format!(r#"{{"worker_id":"{}","queues":["q1"],"batch":1}}"#, "x".repeat(400_000))), true, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
        (Method::POST, "/api/jobs/local/trigger", Some(r#"{"payload": 1, "extra": true}"#.into()), true, StatusCode::BAD_REQUEST, "invalid_json"),
        (Method::POST, "/api/jobs/local/trigger", Some("[null, null]".into()), true, StatusCode::BAD_REQUEST, "invalid_json"),
        (Method::POST, "/api/worker/claim", Some(r#"["w", ["q1"], 1, 0]"#.into()), true, StatusCode::BAD_REQUEST, "invalid_json"),
        (Method::POST, "/api/jobs/local/trigger", Some(format!(r#"{{"payload": "{}"}}"#, "p".repeat(20_000))), true, StatusCode::BAD_REQUEST, "bad_request"),
        (Method::POST, "/api/worker/release", Some(r#"{"worker_id":"w","leases":[{"id":1,"attempt":2147483648,"lease_token":"x"}]}"#.into()), true, StatusCode::BAD_REQUEST, "bad_request"),
        (Method::POST, "/api/jobs/nope/trigger", None, true, StatusCode::NOT_FOUND, "not_found"),
        (Method::POST, "/api/jobs/..%2Fetc/trigger", None, true, StatusCode::NOT_FOUND, "not_found"),
        (Method::GET, "/api/executions/999999", None, true, StatusCode::NOT_FOUND, "not_found"),
        (Method::GET, "/api/executions/-4", None, true, StatusCode::NOT_FOUND, "not_found"),
        (Method::GET, "/api/executions/abc", None, true, StatusCode::BAD_REQUEST, "bad_request"),
        (Method::GET, "/api/executions?limit=-1", None, true, StatusCode::BAD_REQUEST, "bad_request"),
        (Method::GET, "/api/executions?limit=abc", None, true, StatusCode::BAD_REQUEST, "bad_request"),
        (Method::GET, "/api/executions?status=stuck", None, true, StatusCode::BAD_REQUEST, "bad_request"),
        (Method::GET, "/api/executions?since=yesterday", None, true, StatusCode::BAD_REQUEST, "bad_request"),
        (Method::GET, "/api/executions?bogus=1", None, true, StatusCode::BAD_REQUEST, "bad_request"),
        (Method::POST, "/api/system/cleanup/stale-executions", Some(r#"{"stale_after":"10x"}"#.into()), true, StatusCode::BAD_REQUEST, "bad_request"),
        (Method::POST, "/api/worker/complete", Some(r#"{"worker_id":"w","id":1,"attempt":1,"lease_token":"x","outcome":"maybe"}"#.into()), true, StatusCode::BAD_REQUEST, "bad_request"),
        (Method::POST, "/api/worker/heartbeat", Some(r#"{"worker_id":"w","leases":[{"id":1,"attempt":1,"lease_token":"x","progress":7}]}"#.into()), true, StatusCode::BAD_REQUEST, "bad_request"),
        (Method::GET, "/api/nowhere", None, true, StatusCode::NOT_FOUND, "not_found"),
        (Method::DELETE, "/api/jobs", None, true, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
    ];
    for (method, uri, body, json, want, code) in cases {
        let (s, v) = api.raw(method.clone(), uri, None, body, json).await;
        assert_error(s, &v, want, code);
    }
    assert!(
        api.store
            .list_executions(Default::default())
            .await
            .unwrap()
            .is_empty(),
        "nothing was created"
    );
}

#[tokio::test]
async fn trigger_with_an_idempotency_key_creates_one_execution() {
    let api = api(false).await;
    let body = json!({"payload": {"report": "q3"}, "idempotency_key": "order-17"});
    let (s1, v1) = api
        .call(
            Method::POST,
            "/api/jobs/local/trigger",
            None,
            Some(body.clone()),
        )
        .await;
    assert_eq!(s1, StatusCode::CREATED, "{v1}");
    assert_eq!(v1["execution"]["payload"], json!({"report": "q3"}));
    let (s2, v2) = api
        .call(Method::POST, "/api/jobs/local/trigger", None, Some(body))
        .await;
    assert_eq!(s2, StatusCode::OK);
    assert_eq!(v2["created"], false);
    assert_eq!(v2["execution"]["id"], v1["execution"]["id"]);
    let (s3, _) = api
        .call(Method::POST, "/api/jobs/local/trigger", None, None)
        .await;
    assert_eq!(s3, StatusCode::CREATED, "an empty body is a plain trigger");
    let (_, page) = api
        .call(Method::GET, "/api/executions?job=local&limit=1", None, None)
        .await;
    assert_eq!(page["executions"].as_array().unwrap().len(), 1);
    let before = page["next_before"].as_i64().unwrap();
    let (_, page2) = api
        .call(
            Method::GET,
            &format!("/api/executions?job=local&limit=1&before={before}"),
            None,
            None,
        )
        .await;
    assert_eq!(page2["executions"][0]["id"], v1["execution"]["id"]);
}

#[tokio::test]
async fn the_worker_protocol_fences_every_report() {
    let api = api(false).await;
    api.store
        .trigger(jobward_store::TriggerParams {
            job: "remote".into(),
            actor: "t".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let (s, v) = api
        .call(
            Method::POST,
            "/api/worker/claim",
            None,
            Some(json!({"worker_id": "w1", "queues": ["q1"], "batch": 5})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let e = &v["executions"][0];
    let (id, token) = (
        e["id"].as_i64().unwrap(),
        e["lease_token"].as_str().unwrap().to_string(),
    );
    assert_eq!(e["heartbeat_timeout_ms"], 3000);
    let beat = json!({"worker_id": "w1", "leases": [{"id": id, "attempt": 1, "lease_token": token, "progress": 0.3, "phase": "load"}]});
    let (s, v) = api
        .call(Method::POST, "/api/worker/heartbeat", None, Some(beat))
        .await;
    assert_eq!((s, v["renewed"].clone()), (StatusCode::OK, json!([id])));
    let forged =
        json!({"worker_id": "w1", "leases": [{"id": id, "attempt": 1, "lease_token": "forged"}]});
    let (s, v) = api
        .call(Method::POST, "/api/worker/heartbeat", None, Some(forged))
        .await;
    assert_error(s, &v, StatusCode::CONFLICT, "lease_lost");
    let done = json!({"worker_id": "w1", "id": id, "attempt": 1, "lease_token": token, "outcome": "failed", "exit_code": 2, "log_tail": "boom\n"});
    let (s1, v1) = api
        .call(
            Method::POST,
            "/api/worker/complete",
            None,
            Some(done.clone()),
        )
        .await;
    assert_eq!(s1, StatusCode::OK, "{v1}");
    assert_eq!(
        (
            v1["execution"]["status"].as_str(),
            v1["execution"]["reason"].as_str()
        ),
        (Some("failed"), Some("exit_code"))
    );
    let (s2, v2) = api
        .call(
            Method::POST,
            "/api/worker/complete",
            None,
            Some(done.clone()),
        )
        .await;
    assert_eq!(
        (s2, &v2),
        (StatusCode::OK, &v1),
        "the same completion is answered the same way twice"
    );
    let mut other = done;
    other["outcome"] = json!("completed");
    let (s, v) = api
        .call(Method::POST, "/api/worker/complete", None, Some(other))
        .await;
    assert_error(s, &v, StatusCode::CONFLICT, "lease_lost");
    let (_, log) = api
        .call(
            Method::GET,
            &format!("/api/executions/{id}/log"),
            None,
            None,
        )
        .await;
    assert_eq!(
        log["log"], "boom\n",
        "the worker's log tail is kept as the execution's log"
    );
    let (_, events) = api
        .call(
            Method::GET,
            &format!("/api/executions/{id}/events"),
            None,
            None,
        )
        .await;
    let refused = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "refused")
        .count();
    assert_eq!(
        refused, 2,
        "the forged heartbeat and the conflicting completion are in the event log"
    );
    let (_, metrics) = api.raw(Method::GET, "/metrics", None, None, false).await;
    let text = metrics.as_str().unwrap();
    assert!(
        text.contains("jobward_stale_reports_refused_total"),
        "{text}"
    );
    assert!(
        text.contains("jobward_executions{state=\"failed\"} 1"),
        "{text}"
    );
}

/// The batched protocol: one call completes many (each fenced by its own lease and answered
/// alone) and claims the next batch.
#[tokio::test]
async fn a_batch_of_completions_is_answered_one_by_one_and_exchange_claims_the_next() {
    let api = api(false).await;
    let triggers: Vec<_> = (0..6)
        .map(|_| jobward_store::TriggerParams {
            job: "remote".into(),
            actor: "t".into(),
            ..Default::default()
        })
        .collect();
    for r in api.store.trigger_many(triggers).await.unwrap() {
        r.unwrap();
    }
    // Claim three through exchange (nothing to complete yet).
    let (s, v) = api
        .call(
            Method::POST,
            "/api/worker/exchange",
            None,
            Some(json!({"worker_id": "w1", "completions": [], "queues": ["q1"], "batch": 3})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let first: Vec<(i64, String)> = v["executions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["id"].as_i64().unwrap(),
                e["lease_token"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(first.len(), 3);
    // Complete them (one with a forged token, one twice) and claim the other three in the
    // same call.
    let report = |id: i64, token: &str, outcome: &str| json!({"id": id, "attempt": 1, "lease_token": token, "outcome": outcome, "exit_code": if outcome == "failed" { 3 } else { 0 }});
    let completions = json!([
        report(first[0].0, &first[0].1, "completed"),
        report(first[1].0, "forged", "completed"),
        report(first[2].0, &first[2].1, "failed"),
        report(first[0].0, &first[0].1, "completed"),
    ]);
    let (s, v) = api
        .call(
            Method::POST,
            "/api/worker/exchange",
            None,
            Some(json!({"worker_id": "w1", "completions": completions, "queues": ["q1"], "batch": 10})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let results: Vec<(i64, String)> = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["id"].as_i64().unwrap(),
                r["result"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        results,
        vec![
            (first[0].0, "accepted".to_string()),
            (first[1].0, "lease_lost".to_string()),
            (first[2].0, "accepted".to_string()),
            (first[0].0, "repeated".to_string()),
        ],
        "{v}"
    );
    assert_eq!(v["results"][2]["status"], "failed");
    assert_eq!(
        v["executions"].as_array().unwrap().len(),
        3,
        "the rest were claimed in the same call: {v}"
    );
    // The forged report changed nothing and is in the event log; the real lease still works.
    let e = api.store.get_execution(first[1].0).await.unwrap().unwrap();
    assert_eq!(e.state, jobward_core::State::Running);
    let events = api.store.events(first[1].0).await.unwrap();
    assert_eq!(
        events
            .iter()
            .filter(|e| e.kind == jobward_store::EventKind::Refused)
            .count(),
        1
    );
    let (s, v) = api
        .call(
            Method::POST,
            "/api/worker/complete-batch",
            None,
            Some(json!({"worker_id": "w1", "completions": [report(first[1].0, &first[1].1, "completed")]})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["results"][0]["result"], "accepted", "{v}");
    assert_eq!(v["results"][0]["status"], "completed", "{v}");
    // A malformed batch is refused whole and changes nothing; the error names the item.
    let (s, v) = api
        .call(
            Method::POST,
            "/api/worker/complete-batch",
            None,
            Some(json!({"worker_id": "w1", "completions": [
                report(first[1].0, &first[1].1, "failed"),
                {"id": first[1].0, "attempt": 0, "lease_token": first[1].1, "outcome": "completed"},
            ]})),
        )
        .await;
    assert_error(s, &v, StatusCode::BAD_REQUEST, "bad_request");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("completions[1]: "),
        "{v}"
    );
    let (s, v) = api
        .call(
            Method::POST,
            "/api/worker/complete-batch",
            None,
            Some(json!({"worker_id": "", "completions": []})),
        )
        .await;
    assert_error(s, &v, StatusCode::BAD_REQUEST, "bad_request");
    let (s, v) = api
        .call(
            Method::POST,
            "/api/worker/exchange",
            None,
            Some(json!({"worker_id": "w", "completions": [], "queues": ["q1"], "batch": 101})),
        )
        .await;
    assert_error(s, &v, StatusCode::BAD_REQUEST, "bad_request");
}

/// Bulk enqueue: many triggers of several jobs in one request and one transaction, each
/// answered alone (idempotency keys honoured per item, a bad item refused alone).
#[tokio::test]
async fn a_batch_of_triggers_is_created_at_once_and_answered_per_item() {
    let api = api(false).await;
    let mut triggers: Vec<Value> = (0..500)
        .map(|i| json!({"job": if i % 2 == 0 { "remote" } else { "local" }}))
        .collect();
    triggers.push(json!({"job": "remote", "idempotency_key": "k1", "payload": {"n": 1}}));
    triggers.push(json!({"job": "remote", "idempotency_key": "k1", "payload": {"n": 2}}));
    triggers.push(json!({"job": "nope"}));
    triggers.push(json!({"job": "remote", "priority": 50}));
    triggers.push(json!({"job": "remote", "delay": "90s"}));
    triggers.push(json!({"job": "remote", "delay": "soon"}));
    let (s, v) = api
        .call(
            Method::POST,
            "/api/triggers",
            None,
            Some(json!({ "triggers": triggers })),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 506);
    let count = |what: &str| results.iter().filter(|r| r["result"] == what).count();
    assert_eq!(count("accepted"), 503, "{v}");
    assert_eq!(
        count("repeated"),
        1,
        "the second use of k1 returns the first execution"
    );
    assert_eq!(results[500]["id"], results[501]["id"]);
    assert_eq!(
        results[502]["error"]["code"], "not_found",
        "{}",
        results[502]
    );
    assert_eq!(
        results[505]["error"]["code"], "bad_request",
        "{}",
        results[505]
    );
    let queued = api
        .store
        .list_executions(jobward_store::ExecutionFilter {
            limit: 10_000,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(queued.len(), 503, "one execution per accepted trigger");
    let delayed = queued
        .iter()
        .find(|e| Some(e.id) == results[504]["id"].as_i64())
        .unwrap();
    let now = api.store.now().await.unwrap();
    let wait = jobward_core::deadline::between(now, delayed.run_after);
    assert!(
        wait > Duration::from_secs(80) && wait <= Duration::from_secs(90),
        "the delayed run waits ~90s: {wait:?}"
    );
    // Too many in one batch, or one item the schema rules out, is refused whole and creates
    // nothing; the error names the item.
    let (s, v) = api
        .call(
            Method::POST,
            "/api/triggers",
            None,
            Some(json!({ "triggers": vec![json!({"job": "remote"}); 1001] })),
        )
        .await;
    assert_error(s, &v, StatusCode::BAD_REQUEST, "bad_request");
    let (s, v) = api
        .call(
            Method::POST,
            "/api/triggers",
            None,
            Some(json!({ "triggers": [{"job": "remote"}, {"job": "remote", "priority": 5000}] })),
        )
        .await;
    assert_error(s, &v, StatusCode::BAD_REQUEST, "bad_request");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("triggers[1]: ")
            && v["error"]["message"].as_str().unwrap().contains("priority"),
        "{v}"
    );
    assert_eq!(
        api.store
            .list_executions(jobward_store::ExecutionFilter {
                limit: 10_000,
                ..Default::default()
            })
            .await
            .unwrap()
            .len(),
        503
    );
}

#[tokio::test]
async fn a_long_poll_claim_returns_when_work_arrives() {
    let api = api(false).await;
    let router = api.router.clone();
    let claim = tokio::spawn(async move {
        let req = Request::builder()
            .method(Method::POST)
            .uri("/api/worker/claim")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(
                json!({"worker_id": "w", "queues": ["q1"], "batch": 1, "wait_ms": 10000})
                    .to_string(),
            ))
            .unwrap();
        let started = std::time::Instant::now();
        let resp = router.oneshot(req).await.unwrap();
        let v: Value = serde_json::from_slice(
            &axum::body::to_bytes(resp.into_body(), 1 << 20)
                .await
                .unwrap(),
        )
        .unwrap();
        (started.elapsed(), v)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (s, _) = api
        .call(Method::POST, "/api/jobs/remote/trigger", None, None)
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let (waited, v) = claim.await.unwrap();
    assert_eq!(v["executions"].as_array().unwrap().len(), 1, "{v}");
    assert!(
        waited < Duration::from_secs(5),
        "returned when work arrived, not at wait_ms: {waited:?}"
    );
}

#[tokio::test]
async fn the_openapi_document_covers_every_endpoint() {
    let api = api(false).await;
    let (s, doc) = api.call(Method::GET, "/api/openapi.json", None, None).await;
    assert_eq!(s, StatusCode::OK);
    let mut all = endpoints();
    all.push((Method::POST, "/api/executions/1/progress", None, None));
    for (method, uri, _, _) in all {
        let templated = uri
            .replace("/local/", "/{name}/")
            .replace("/api/jobs/local", "/api/jobs/{name}")
            .replace("/1", "/{id}");
        let op = &doc["paths"][&templated][method.as_str().to_lowercase()];
        assert!(op.is_object(), "{method} {templated} is not documented");
        assert!(
            op["responses"]["default"].is_object() || op["responses"]["4XX"].is_object(),
            "{method} {templated} documents no error"
        );
    }
    // And the other way: every documented operation is in the role table (or is a probe or
    // the lease-proven progress report), so no route escapes the role test.
    let mut table: Vec<(String, String)> = endpoints()
        .into_iter()
        .map(|(m, uri, _, _)| {
            let t = uri
                .replace("/local/", "/{name}/")
                .replace("/api/jobs/local", "/api/jobs/{name}")
                .replace("/1", "/{id}");
            (m.as_str().to_lowercase(), t)
        })
        .collect();
    table.extend([
        ("post".into(), "/api/executions/{id}/progress".into()),
        ("post".into(), "/api/executions/{id}/heartbeat".into()),
        ("post".into(), "/api/executions/{id}/complete".into()),
        ("post".into(), "/api/ping/{name}/{action}".into()),
        ("get".into(), "/livez".into()),
        ("get".into(), "/readyz".into()),
    ]);
    let mut ids: Vec<&str> = doc["paths"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|ops| ops.as_object().unwrap().values())
        .filter_map(|op| op["operationId"].as_str())
        .collect();
    let all = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(
        ids.len(),
        all,
        "operation ids are unique (clients are generated from them)"
    );
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            assert!(
                table.contains(&(method.clone(), path.clone())),
                "{method} {path} is documented but not in the role table"
            );
        }
    }
    // The probes: documented, with no security requirement.
    for (path, statuses) in [("/livez", &["200"][..]), ("/readyz", &["200", "503"])] {
        let op = &doc["paths"][path]["get"];
        assert!(op.is_object(), "GET {path} is not documented");
        for st in statuses {
            assert!(
                op["responses"][*st].is_object(),
                "GET {path} documents no {st}"
            );
        }
        assert_eq!(
            op["security"],
            json!([{}]),
            "GET {path} needs no token: {op}"
        );
    }
}

/// The probes answer without a token even when tokens are configured; `/readyz` is 503
/// with a reason when no node runs here or the server is shutting down.
#[tokio::test]
async fn probes_answer_without_a_token_and_readyz_says_why_not() {
    let api = api(true).await;
    let (s, v) = api.call(Method::GET, "/livez", None, None).await;
    assert_eq!(
        (s, v["status"].as_str()),
        (StatusCode::OK, Some("ok")),
        "{v}"
    );
    let (s, v) = api.call(Method::GET, "/readyz", None, None).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert_eq!(v["status"], "unavailable");
    assert!(v["reason"].as_str().unwrap().contains("no node"), "{v}");
    api.state.begin_shutdown();
    let (s, v) = api.call(Method::GET, "/readyz", None, None).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(v["reason"], "shutting down");
}

#[tokio::test]
async fn a_shutting_down_server_hands_out_no_work_and_ends_long_polls() {
    let api = api(false).await;
    let router = api.router.clone();
    let poll = tokio::spawn(async move {
        let req = Request::builder()
            .method(Method::POST)
            .uri("/api/worker/claim")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(
                json!({"worker_id": "w", "queues": ["q1"], "batch": 1, "wait_ms": 20000})
                    .to_string(),
            ))
            .unwrap();
        let started = std::time::Instant::now();
        let resp = router.oneshot(req).await.unwrap();
        let v: Value = serde_json::from_slice(
            &axum::body::to_bytes(resp.into_body(), 1 << 20)
                .await
                .unwrap(),
        )
        .unwrap();
        (started.elapsed(), v)
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    api.store
        .trigger(jobward_store::TriggerParams {
            job: "remote".into(),
            actor: "t".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    api.state.begin_shutdown();
    let (waited, v) = poll.await.unwrap();
    assert!(
        waited < Duration::from_secs(5),
        "the long poll ended with the shutdown: {waited:?}"
    );
    assert_eq!(
        v["executions"],
        json!([]),
        "no work is handed out while shutting down"
    );
    let (_, v) = api
        .call(
            Method::POST,
            "/api/worker/claim",
            None,
            Some(json!({"worker_id": "w", "queues": ["q1"], "batch": 1})),
        )
        .await;
    assert_eq!(v["executions"], json!([]));
}

/// Every read surface marks a running execution whose lease expired (its owner is silent and
/// no reaper has settled it yet): the API's fields and the dashboard's words.
#[tokio::test]
async fn a_running_execution_with_an_expired_lease_says_so() {
    let a = api(false).await;
    let (s, _) = a
        .call(Method::POST, "/api/jobs/remote/trigger", None, None)
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, claimed) = a
        .call(
            Method::POST,
            "/api/worker/claim",
            None,
            Some(json!({"worker_id": "w", "queues": ["q1"], "batch": 1})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{claimed}");
    let id = claimed["executions"][0]["id"].as_i64().unwrap();
    let (_, fresh) = a
        .call(Method::GET, &format!("/api/executions/{id}"), None, None)
        .await;
    assert_eq!(fresh["lease_expired"], false, "{fresh}");
    assert_eq!(fresh["status_text"], "running");
    // The worker goes silent past its lease; no reaper runs in this test.
    a.store.clock().advance(Duration::from_secs(45));
    let (_, e) = a
        .call(Method::GET, &format!("/api/executions/{id}"), None, None)
        .await;
    assert_eq!(e["status"], "running");
    assert_eq!(e["lease_expired"], true, "{e}");
    assert!(e["heartbeat_age_ms"].as_u64().unwrap() >= 45_000, "{e}");
    assert!(
        e["status_text"]
            .as_str()
            .unwrap()
            .starts_with("running — no heartbeat for"),
        "{e}"
    );
    let (_, running) = a
        .call(Method::GET, "/api/system/executions/running", None, None)
        .await;
    assert_eq!(running["executions"][0]["lease_expired"], true);
    let (_, jobs) = a.call(Method::GET, "/api/jobs", None, None).await;
    let remote = jobs["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["name"] == "remote")
        .unwrap();
    assert_eq!(remote["lease_expired"], true, "{remote}");
    for page in [format!("/executions/{id}"), "/".into(), "/jobs".into()] {
        let (s, html) = a.raw(Method::GET, &page, None, None, false).await;
        assert_eq!(s, StatusCode::OK);
        let html = html.as_str().unwrap();
        assert!(
            html.contains("no heartbeat for") && html.contains("(lease expired)"),
            "{page} does not say the lease expired"
        );
    }
}

/// Every error is one line, whatever control characters a request carries (found by the
/// api_bodies fuzz target: values are quoted in messages).
#[tokio::test]
async fn errors_stay_on_one_line_whatever_the_request_carries() {
    let a = api(false).await;
    for (method, uri, body) in [
        (Method::GET, "/api/executions?since=%0A", None),
        (Method::GET, "/api/executions?status=x%0Ay", None),
        (Method::GET, "/api/jobs/a%0Ab", None),
        (Method::POST, "/api/jobs/%0A/trigger", None),
        (
            Method::POST,
            "/api/worker/claim",
            Some(json!({"worker_id": "w", "queues": ["a\nb"], "batch": 1})),
        ),
    ] {
        let (s, v) = a.call(method, uri, None, body).await;
        assert!(s.is_client_error(), "{uri}: {s}");
        let m = v["error"]["message"].as_str().unwrap();
        assert!(!m.contains('\n') && !m.contains('\r'), "{uri}: {m:?}");
    }
}

/// Handler jobs (a queue, no command) go only to workers that name a handler for them; the
/// job's detail says who serves it.
#[tokio::test]
async fn a_handler_job_goes_only_to_a_worker_with_its_handler() {
    let api = api(false).await;
    let (s, v) = api
        .call(Method::GET, "/api/jobs/send-report", None, None)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        v["served"], "no worker has claimed from queue 'q1' in the last 5m",
        "{v}"
    );
    for job in ["send-report", "remote"] {
        let (s, v) = api
            .call(
                Method::POST,
                &format!("/api/jobs/{job}/trigger"),
                None,
                None,
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
    }
    let claim = |body: Value| {
        let api = &api;
        async move {
            let (s, v) = api
                .call(Method::POST, "/api/worker/claim", None, Some(body))
                .await;
            assert_eq!(s, StatusCode::OK, "{v}");
            v["executions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["job"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        }
    };
    // A worker that runs commands only is not offered the handler job, although it is older.
    assert_eq!(
        claim(json!({"worker_id": "rs", "queues": ["q1"], "batch": 10, "handlers": [], "commands": true})).await,
        vec!["remote"]
    );
    let (_, v) = api
        .call(Method::GET, "/api/jobs/send-report", None, None)
        .await;
    assert_eq!(
        v["served"], "1 worker claims from queue 'q1' but does not run a handler for 'send-report'",
        "{v}"
    );
    assert_eq!(
        claim(
            json!({"worker_id": "py", "queues": ["q1"], "batch": 10, "handlers": ["send-report"]})
        )
        .await,
        vec!["send-report"]
    );
    let (_, v) = api
        .call(Method::GET, "/api/jobs/send-report", None, None)
        .await;
    let served = v["served"].as_str().unwrap();
    assert!(
        served.starts_with("served by 1 worker on queue 'q1' (py; last claim"),
        "{v}"
    );
    assert_eq!(v["workers"][0]["handlers"], json!(["send-report"]), "{v}");
    assert_eq!(v["workers"][0]["commands"], false, "{v}");
    // A malformed handler name is refused with the field named.
    let (s, v) = api
        .call(
            Method::POST,
            "/api/worker/claim",
            None,
            Some(json!({"worker_id": "py", "queues": ["q1"], "batch": 1, "handlers": ["a b"]})),
        )
        .await;
    assert_error(s, &v, StatusCode::BAD_REQUEST, "bad_request");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("handlers:"),
        "{v}"
    );
}

#[tokio::test]
async fn every_metric_has_help_and_per_job_series_are_there() {
    let api = api(false).await;
    let e = api
        .store
        .trigger(jobward_store::TriggerParams {
            job: "remote".into(),
            actor: "t".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let (_, v) = api
        .call(
            Method::POST,
            "/api/worker/claim",
            None,
            Some(json!({"worker_id": "w", "queues": ["q1"], "batch": 1})),
        )
        .await;
    let c = &v["executions"][0];
    assert_eq!(c["id"], e.execution.id);
    let (s, v) = api
        .call(
            Method::POST,
            "/api/worker/complete",
            None,
            Some(json!({"worker_id": "w", "id": c["id"], "attempt": 1, "lease_token": c["lease_token"], "outcome": "completed"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (_, text) = api.call(Method::GET, "/metrics", None, None).await;
    let text = text.as_str().unwrap().to_string();
    let names: std::collections::BTreeSet<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap())
        .map(|n| {
            n.trim_end_matches("_bucket")
                .trim_end_matches("_sum")
                .trim_end_matches("_count")
        })
        .collect();
    for n in &names {
        assert!(
            text.contains(&format!("# HELP {n} ")),
            "no # HELP for {n}:\n{text}"
        );
    }
    for series in [
        "jobward_job_last_success_timestamp_seconds{job=\"remote\"}",
        "jobward_job_last_finish_timestamp_seconds{job=\"remote\",state=\"completed\"}",
        "jobward_job_duration_seconds_bucket{job=\"remote\"",
        "jobward_stale_executions",
    ] {
        assert!(text.contains(series), "no {series}:\n{text}");
    }
}
