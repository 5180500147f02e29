//! The one error shape of the API, and extractors whose rejections use it.

use axum::extract::rejection::{BytesRejection, JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use jobward_protocol::ErrorCode;
use jobward_protocol::{ErrorBody, ErrorDetail};
use jobward_store::StoreError;
use serde::de::DeserializeOwned;

use crate::metrics;

/// An API error: a status, a stable code and a message for humans.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: ErrorCode,
    pub message: String,
}

/// Every error message is one line: a request value it quotes may carry control characters
/// (a newline in a query string, a job name, a queue), which are escaped here, once for all.
fn one_line(m: String) -> String {
    if !m.chars().any(char::is_control) {
        return m;
    }
    m.chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

impl ApiError {
    /// The same error, said of one item of a batch: "triggers[3]: …".
    pub fn of_item(mut self, list: &str, i: usize) -> ApiError {
        self.message = format!("{list}[{i}]: {}", self.message);
        self
    }

    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: one_line(message.into()),
        }
    }
    pub fn bad_request(m: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::BadRequest, m)
    }
    pub fn not_found(m: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, m)
    }
    pub fn conflict(m: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, ErrorCode::Conflict, m)
    }
    pub fn too_large(m: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::PayloadTooLarge, m)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: one_line(self.message),
            },
        };
        (self.status, axum::Json(body)).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::LeaseLost { .. } => {
                ApiError::new(StatusCode::CONFLICT, ErrorCode::LeaseLost, e.to_string())
            }
            StoreError::ExecutionNotFound(_) | StoreError::JobNotFound(_) => {
                ApiError::not_found(e.to_string())
            }
            StoreError::JobUndefined(_) | StoreError::Refused(_) => {
                ApiError::conflict(e.to_string())
            }
            StoreError::Invalid(_) => ApiError::bad_request(e.to_string()),
            StoreError::Busy(_) => {
                metrics::database_error("busy");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    ErrorCode::Unavailable,
                    "the ledger is busy; try again",
                )
            }
            other => {
                // The detail goes to the log, never to the client.
                metrics::database_error("error");
                tracing::error!(error = %other, "ledger error while serving a request");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    ErrorCode::Internal,
                    "the ledger could not answer; try again",
                )
            }
        }
    }
}

/// The framework's rejection texts break lines between their parts: a space reads better.
fn flatten(s: String) -> String {
    s.replace('\n', " ")
}

fn from_bytes_rejection(r: &BytesRejection) -> ApiError {
    match r {
        BytesRejection::FailedToBufferBody(_) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::too_large("the request body is too large")
        }
        _ => ApiError::bad_request("the request body could not be read"),
    }
}

/// Request bodies are JSON objects. (serde would also read a struct from a JSON array, which
/// no client means to send.)
fn from_object<T: DeserializeOwned>(v: serde_json::Value) -> Result<T, ApiError> {
    if !v.is_object() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidJson,
            "the request body must be a JSON object",
        ));
    }
    serde_json::from_value(v).map_err(|e| {
        let m = e.to_string();
        // Well-formed JSON whose value is outside its allowed set (an unknown outcome) is a
        // bad value, not bad JSON.
        if m.starts_with("unknown variant") {
            return ApiError::bad_request(m);
        }
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidJson,
            format!("invalid JSON body: {e}"),
        )
    })
}

/// JSON body extractor whose rejections are in the API's error shape.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<serde_json::Value>::from_request(req, state).await {
            Ok(axum::Json(v)) => from_object(v).map(ApiJson),
            Err(JsonRejection::BytesRejection(r)) => Err(from_bytes_rejection(&r)),
            Err(JsonRejection::MissingJsonContentType(_)) => Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                ErrorCode::UnsupportedMediaType,
                "send the body as JSON with Content-Type: application/json",
            )),
            Err(e) => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::InvalidJson,
                flatten(e.body_text()),
            )),
        }
    }
}

/// A JSON body that may be absent (an empty body, or `null`, means the defaults; a body of
/// only whitespace is not JSON and is refused like any other).
pub struct OptionalJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Default> FromRequest<S> for OptionalJson<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|r| from_bytes_rejection(&r))?;
        if bytes.is_empty() {
            return Ok(OptionalJson(T::default()));
        }
        let v: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::InvalidJson,
                format!("invalid JSON body: {e}"),
            )
        })?;
        if v.is_null() {
            return Ok(OptionalJson(T::default()));
        }
        from_object(v).map(OptionalJson)
    }
}

/// Query string extractor whose rejections are in the API's error shape.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| ApiQuery(q.0))
            .map_err(|e: QueryRejection| ApiError::bad_request(flatten(e.body_text())))
    }
}

/// Path extractor whose rejections are in the API's error shape.
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| ApiPath(p.0))
            .map_err(|e: PathRejection| ApiError::bad_request(flatten(e.body_text())))
    }
}
