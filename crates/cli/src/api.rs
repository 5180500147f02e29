//! How a command reaches the ledger: a jobward server's API over HTTP (`--server`), or the
//! same API run in this process over the database the configuration names. Either way the
//! command speaks the API, so both give the same answers, errors and records.

use axum::body::Body;
use axum::http::Method;
use axum::http::{Request, header};
use jobward_protocol::ErrorBody;
use jobward_server::http::{AppState, Tokens};
use jobward_store::DynStore;
use jobward_worker::ClientError;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tower::ServiceExt;

use crate::commands::{R, actor, open_existing, settings};
use crate::{Cli, Failure, ServerArgs};
use jobward::config::Settings;

pub enum Api {
    /// A jobward server, with a token.
    Server(jobward_worker::Client),
    /// The API in process, over the database (local administration).
    Local {
        router: axum::Router,
        settings: Box<Settings>,
    },
}

/// An API error as the CLI reports it: bad input (exit 2) or a refusal (exit 1).
fn failure(e: ClientError, base: &str) -> Failure {
    match e {
        ClientError::Api {
            status: 400 | 404 | 405 | 413 | 415,
            message,
            ..
        } => Failure::Input(message),
        ClientError::Api { message, .. } => Failure::Check(message),
        ClientError::Unreachable(m) => {
            Failure::Check(format!("cannot reach the jobward server at {base}: {m}"))
        }
        ClientError::Protocol(m) => Failure::Check(m),
    }
}

impl Api {
    /// The server named by `--server` (or JOBWARD_SERVER), else the API in process over the
    /// configured database.
    pub async fn open(cli: &Cli, server: &ServerArgs) -> R<Api> {
        if let Some(url) = &server.server {
            let client = jobward_worker::Client::new(url, server.token.clone())
                .map_err(|e| Failure::Input(format!("--server: {e}")))?;
            return Ok(Api::Server(client));
        }
        let s = settings(cli, None)?;
        let store = open_existing(&s).await?;
        Ok(Api::local(s, store))
    }

    /// The API in process over `store`: no tokens (the operator holds the database), the
    /// user running the command recorded as the actor.
    pub fn local(s: Settings, store: DynStore) -> Api {
        let state = AppState::new(store, Tokens::default(), s.server.log_dir.clone()).with(|a| {
            a.health = s.health.clone();
            a.job_defaults = s.job_defaults.clone();
            a.api_commands = true;
            a.config_file = Some(s.source.clone());
            a.anonymous_actor = actor();
        });
        Api::Local {
            router: jobward_server::http::app(state),
            settings: Box::new(s),
        }
    }

    /// The local database's settings, when this goes through no server.
    pub fn local_settings(&self) -> Option<&Settings> {
        match self {
            Api::Local { settings, .. } => Some(settings),
            Api::Server(_) => None,
        }
    }

    /// Where the answers come from, for messages.
    pub fn base(&self) -> String {
        match self {
            Api::Server(c) => c.base().to_string(),
            Api::Local { settings, .. } => jobward_store::display_url(&settings.server.db),
        }
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> R<T> {
        self.call::<(), T>(Method::GET, path, None).await
    }

    pub async fn send<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: &B,
    ) -> R<T> {
        self.call(method, path, Some(body)).await
    }

    pub async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> R<T> {
        match self {
            Api::Server(c) => c
                .call(method, path, body)
                .await
                .map_err(|e| failure(e, c.base())),
            Api::Local { router, .. } => {
                let mut req = Request::builder().method(method).uri(path);
                let body = match body {
                    Some(b) => {
                        req = req.header(header::CONTENT_TYPE, "application/json");
                        Body::from(
                            serde_json::to_vec(b).map_err(|e| Failure::Input(e.to_string()))?,
                        )
                    }
                    None => Body::empty(),
                };
                let req = req.body(body).map_err(|e| Failure::Input(e.to_string()))?;
                let resp = router
                    .clone()
                    .oneshot(req)
                    .await
                    .map_err(|e| Failure::Check(e.to_string()))?;
                let status = resp.status();
                let bytes = axum::body::to_bytes(resp.into_body(), 64 << 20)
                    .await
                    .map_err(|e| Failure::Check(e.to_string()))?;
                if status.is_success() {
                    return serde_json::from_slice(&bytes)
                        .map_err(|e| Failure::Check(format!("unexpected answer: {e}")));
                }
                let e = match serde_json::from_slice::<ErrorBody>(&bytes) {
                    Ok(e) => ClientError::Api {
                        status: status.as_u16(),
                        code: e.error.code,
                        message: e.error.message,
                    },
                    Err(_) => ClientError::Protocol(status.to_string()),
                };
                Err(failure(e, ""))
            }
        }
    }
}

/// A path segment or query value, percent-encoded.
pub fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}
