//! The dashboard through the real router on a real SQLite file: who sees what, and which form
//! posts are refused. (The browser tests in tests/browser drive the same pages in Chromium.)

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use jobward_core::{JobSpec, Overlap};
use jobward_server::http::{AppState, Role, Token, Tokens, app};
use jobward_store::{DynStore, ExecutionFilter, OpenMode, SyncJobs};
use tower::ServiceExt;

const READ: &str = "read-token-0123456789";
const OPERATE: &str = "operate-token-0123456789";
const WORKER: &str = "worker-token-0123456789";

struct Dash {
    _dir: tempfile::TempDir,
    store: DynStore,
    router: Router,
}

async fn dash(tokens: bool) -> Dash {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("ledger.db").display());
    let (store, _) = jobward_store::open(&url, OpenMode::CreateAndMigrate)
        .await
        .unwrap();
    let mut job = JobSpec::new("nightly", "true");
    job.overlap = Overlap::Allow;
    job.schedule = jobward_core::Schedule::cron("0 30 2 * * *", "UTC").unwrap();
    store
        .sync_jobs(SyncJobs {
            jobs: vec![job],
            limits: Default::default(),
        })
        .await
        .unwrap();
    let tokens = if tokens {
        Tokens(vec![
            Token::new("r", Role::Read, READ),
            Token::new("o", Role::Operate, OPERATE),
            Token::new("w", Role::Worker, WORKER),
        ])
    } else {
        Tokens::default()
    };
    let state = AppState::new(store.clone(), tokens, dir.path().join("logs"));
    Dash {
        _dir: dir,
        store,
        router: app(state),
    }
}

fn cookie(secret: &str) -> String {
    let hex: String = secret.bytes().map(|b| format!("{b:02x}")).collect();
    format!("jobward_session={hex}")
}

impl Dash {
    async fn get(&self, uri: &str, cookie: Option<&str>) -> (StatusCode, String, Option<String>) {
        let mut req = Request::get(uri).header(header::HOST, "127.0.0.1:8080");
        if let Some(c) = cookie {
            req = req.header(header::COOKIE, c);
        }
        let r = self
            .router
            .clone()
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = r.status();
        let location = r
            .headers()
            .get(header::LOCATION)
            .map(|v| v.to_str().unwrap().to_string());
        let body = axum::body::to_bytes(r.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, String::from_utf8(body.to_vec()).unwrap(), location)
    }

    async fn post(
        &self,
        uri: &str,
        cookie: Option<&str>,
        origin: Option<&str>,
        form: &str,
    ) -> (StatusCode, String) {
        let mut req = Request::post(uri)
            .header(header::HOST, "127.0.0.1:8080")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        if let Some(c) = cookie {
            req = req.header(header::COOKIE, c);
        }
        if let Some(o) = origin {
            req = req.header(header::ORIGIN, o);
        }
        let r = self
            .router
            .clone()
            .oneshot(req.body(Body::from(form.to_string())).unwrap())
            .await
            .unwrap();
        let status = r.status();
        let body = axum::body::to_bytes(r.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    async fn executions(&self) -> usize {
        self.store
            .list_executions(ExecutionFilter {
                limit: 1000,
                ..Default::default()
            })
            .await
            .unwrap()
            .len()
    }
}

fn csrf_of(page: &str) -> String {
    let at = page
        .find("name=\"csrf\" value=\"")
        .expect("a form with a csrf field")
        + 19;
    page[at..at + 40].to_string()
}

#[tokio::test]
async fn every_page_renders_and_says_the_schedule_in_words() {
    let d = dash(false).await;
    for uri in ["/", "/jobs", "/jobs/nightly", "/stale", "/login"] {
        let (status, body, _) = d.get(uri, None).await;
        assert_eq!(status, StatusCode::OK, "{uri}: {body}");
        assert!(body.starts_with("<!DOCTYPE html>"), "{uri}");
    }
    let (_, jobs, _) = d.get("/jobs", None).await;
    assert!(jobs.contains("At 02:30 AM"), "{jobs}");
    assert!(jobs.contains("never run"));
    for (uri, status) in [
        ("/jobs/nope", StatusCode::NOT_FOUND),
        ("/executions/0", StatusCode::NOT_FOUND),
        ("/executions/abc", StatusCode::NOT_FOUND),
        ("/executions/99", StatusCode::NOT_FOUND),
        ("/jobs/nightly?before=-3", StatusCode::BAD_REQUEST),
        ("/stale?stale_after=banana", StatusCode::BAD_REQUEST),
    ] {
        let (got, body, _) = d.get(uri, None).await;
        assert_eq!(got, status, "{uri}");
        assert!(
            body.contains("class=\"flash error\""),
            "{uri}: an HTML error page"
        );
    }
}

#[tokio::test]
async fn without_tokens_buttons_work_only_with_the_pages_csrf_token() {
    let d = dash(false).await;
    let (_, page, _) = d.get("/jobs", None).await;
    assert!(page.contains(">Trigger</button>"));
    let csrf = csrf_of(&page);
    // No token, a wrong one, or another origin: refused, nothing created.
    for (form, origin) in [
        (String::new(), None),
        ("csrf=0000".to_string(), None),
        (format!("csrf={csrf}"), Some("http://evil.example")),
    ] {
        let (status, body) = d.post("/jobs/nightly/trigger", None, origin, &form).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{form} {origin:?}: {body}");
    }
    assert_eq!(d.executions().await, 0);
    let (status, _) = d
        .post(
            "/jobs/nightly/trigger",
            None,
            Some("http://127.0.0.1:8080"),
            &format!("csrf={csrf}"),
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(d.executions().await, 1);
}

#[tokio::test]
async fn tokens_need_a_login_and_read_sessions_see_no_buttons() {
    let d = dash(true).await;
    let (status, _, location) = d.get("/jobs/nightly", None).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(location.as_deref(), Some("/login?next=/jobs/nightly"));
    // Wrong and worker tokens cannot log in; nothing is set.
    for bad in ["token=nope", &format!("token={WORKER}")] {
        let (status, body) = d.post("/login", None, None, bad).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    }
    let (status, _, _) = d.get("/", Some(&cookie(WORKER))).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    let read = cookie(READ);
    for uri in ["/", "/jobs", "/jobs/nightly", "/stale"] {
        let (status, body, _) = d.get(uri, Some(&read)).await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            !body.contains(">Trigger</button>") && !body.contains(">Pause</button>"),
            "{uri}"
        );
        assert!(body.contains("read only"));
    }
    let (_, page, _) = d.get("/", Some(&read)).await;
    let csrf = csrf_of(&page); // the logout form's
    let (status, body) = d
        .post(
            "/jobs/nightly/trigger",
            Some(&read),
            None,
            &format!("csrf={csrf}"),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(body.contains("role read"));
    // An operate session's token does not work for another session.
    let op = cookie(OPERATE);
    let (status, _) = d
        .post(
            "/jobs/nightly/trigger",
            Some(&op),
            None,
            &format!("csrf={csrf}"),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(d.executions().await, 0);
    let (_, page, _) = d.get("/jobs", Some(&op)).await;
    let (status, _) = d
        .post(
            "/jobs/nightly/trigger",
            Some(&op),
            None,
            &format!("csrf={}", csrf_of(&page)),
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(d.executions().await, 1);
    // A login sets a secure, http-only cookie and goes only to a local path.
    let r = d
        .router
        .clone()
        .oneshot(
            Request::post("/login")
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(Body::from(format!("token={OPERATE}&next=//evil.example")))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(r.headers()[header::LOCATION], "/");
    let set = r.headers()[header::SET_COOKIE].to_str().unwrap();
    assert!(set.contains("HttpOnly") && set.contains("Secure") && set.contains("SameSite=Strict"));
    assert!(
        !set.contains(OPERATE),
        "the cookie does not carry the secret in clear"
    );
}

/// People read node names, not incarnation ids: the Where column, the runner and the event
/// actors show `name (short id)`.
#[tokio::test]
async fn pages_show_node_names_instead_of_incarnation_ids() {
    let d = dash(false).await;
    let incarnation = "0b7e3c1a-5d2f-4e8a-9c6b-1f2a3b4c5d6e";
    let node = jobward_store::NewNode {
        id: incarnation.into(),
        name: "dash-node".into(),
        hostname: "h".into(),
        pid: 1,
        start_ticks: None,
        boot_id: None,
        lease: std::time::Duration::from_secs(30),
        supersede: vec![],
    };
    d.store.register_node(node).await.unwrap();
    let id = d
        .store
        .trigger(jobward_store::TriggerParams {
            job: "nightly".into(),
            actor: "t".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .execution
        .id;
    let claimed = d
        .store
        .claim(jobward_store::ClaimParams {
            serves: Default::default(),
            owner: incarnation.into(),
            runner: "local".into(),
            node_id: Some(incarnation.into()),
            limit: 1,
        })
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    for page in ["/".to_string(), format!("/executions/{id}")] {
        let (s, body, _) = d.get(&page, None).await;
        assert_eq!(s, StatusCode::OK, "{page}");
        assert!(
            body.contains("dash-node (0b7e3c1a)"),
            "{page} does not name the node"
        );
        assert!(
            !body.contains(incarnation),
            "{page} shows the incarnation id"
        );
    }
}
