//! The worker protocol over HTTP, for `jobward worker` and `jobward heartbeat`.

use std::time::Duration;

use jobward_protocol::*;
use reqwest::StatusCode;
use serde::Serialize;
use serde::de::DeserializeOwned;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error of the API's shape.
    #[error("{code}: {message}")]
    Api {
        status: u16,
        code: ErrorCode,
        message: String,
    },
    /// The server could not be reached or did not answer in time.
    #[error("server unreachable: {0}")]
    Unreachable(String),
    #[error("unexpected answer from the server: {0}")]
    Protocol(String),
}

impl ClientError {
    pub fn is_lease_lost(&self) -> bool {
        matches!(
            self,
            ClientError::Api {
                code: ErrorCode::LeaseLost,
                ..
            }
        )
    }
    /// Worth trying again: the server was unreachable, busy or failing.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Unreachable(_) => true,
            ClientError::Api { status, .. } => *status >= 500,
            ClientError::Protocol(_) => false,
        }
    }
}

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Client {
    pub fn new(server: &str, token: Option<String>) -> Result<Client, ClientError> {
        let base = server.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(ClientError::Protocol(format!(
                "server URL '{server}' must start with http:// or https://"
            )));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(45))
            .build()
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        Ok(Client { http, base, token })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    async fn post<B: Serialize, R: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<R, ClientError> {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    /// Any API call: `method` on `path` (with its query), with a JSON body or none; the
    /// answer decoded, or the API's error.
    pub async fn call<B: Serialize, R: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<R, ClientError> {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req.json(b);
        }
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| ClientError::Unreachable(e.without_url().to_string()))?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| ClientError::Unreachable(e.without_url().to_string()))?;
        if status.is_success() {
            return serde_json::from_slice(&bytes)
                .map_err(|e| ClientError::Protocol(e.to_string()));
        }
        match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(e) => Err(ClientError::Api {
                status: status.as_u16(),
                code: e.error.code,
                message: e.error.message,
            }),
            Err(_) if status == StatusCode::NOT_FOUND => Err(ClientError::Protocol(format!(
                "{} not found: is {} a jobward server?",
                path.split('?').next().unwrap_or(path),
                self.base
            ))),
            Err(_) => Err(ClientError::Api {
                status: status.as_u16(),
                code: ErrorCode::Unknown,
                message: status.to_string(),
            }),
        }
    }

    pub async fn claim(&self, req: &ClaimRequest) -> Result<ClaimResponse, ClientError> {
        self.post("/api/worker/claim", req).await
    }

    pub async fn heartbeat(
        &self,
        req: &HeartbeatRequest,
    ) -> Result<HeartbeatResponse, ClientError> {
        self.post("/api/worker/heartbeat", req).await
    }

    pub async fn complete(&self, req: &CompleteRequest) -> Result<CompleteResponse, ClientError> {
        self.post("/api/worker/complete", req).await
    }

    /// Many completions in one call; each is answered alone.
    pub async fn complete_batch(
        &self,
        req: &CompleteBatchRequest,
    ) -> Result<CompleteBatchResponse, ClientError> {
        self.post("/api/worker/complete-batch", req).await
    }

    /// Completes these, then claims the next: one call per batch.
    pub async fn exchange(&self, req: &ExchangeRequest) -> Result<ExchangeResponse, ClientError> {
        self.post("/api/worker/exchange", req).await
    }

    /// Up to 1,000 triggers in one call and one transaction (operate role).
    pub async fn trigger_batch(
        &self,
        req: &TriggerBatchRequest,
    ) -> Result<TriggerBatchResponse, ClientError> {
        self.post("/api/triggers", req).await
    }

    pub async fn release(&self, req: &ReleaseRequest) -> Result<ReleaseResponse, ClientError> {
        self.post("/api/worker/release", req).await
    }

    pub async fn progress(
        &self,
        id: i64,
        req: &ProgressRequest,
    ) -> Result<ExecutionView, ClientError> {
        self.post(&format!("/api/executions/{id}/progress"), req)
            .await
    }

    /// A GET of the API.
    pub async fn get<R: DeserializeOwned>(&self, path: &str) -> Result<R, ClientError> {
        self.call::<(), R>(reqwest::Method::GET, path, None).await
    }

    pub async fn reload(&self) -> Result<ReloadResponse, ClientError> {
        self.post("/api/system/reload", &serde_json::json!({}))
            .await
    }
}
