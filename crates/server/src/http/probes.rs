//! Liveness and readiness probes for load balancers and orchestrators. They answer without a
//! token, even when tokens are configured, and say nothing a token would protect.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use jobward_protocol::{ProbeStatus, ProbeView};

use super::AppState;

/// How long `/readyz` waits for the database before it says it is unreachable.
const PING_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

fn answer(status: StatusCode, reason: Option<String>, node: Option<String>) -> Response {
    let view = ProbeView {
        status: if status.is_success() {
            ProbeStatus::Ok
        } else {
            ProbeStatus::Unavailable
        },
        reason,
        node,
    };
    (status, axum::Json(view)).into_response()
}

#[utoipa::path(get, path = "/livez", tag = "system", security(()),
    responses((status = 200, description = "the process answers (no token needed)", body = ProbeView)))]
pub async fn livez() -> Response {
    answer(StatusCode::OK, None, None)
}

#[utoipa::path(get, path = "/readyz", tag = "system", security(()),
    responses((status = 200, description = "ready: the database answers, this node is registered and not shutting down (no token needed)", body = ProbeView),
              (status = 503, description = "not ready, and why", body = ProbeView)))]
pub async fn readyz(State(state): State<AppState>) -> Response {
    let node = state.node.as_ref().map(|n| n.incarnation());
    let unavailable =
        |why: String| answer(StatusCode::SERVICE_UNAVAILABLE, Some(why), node.clone());
    if state.shutting_down() {
        return unavailable("shutting down".into());
    }
    match &state.node {
        None => return unavailable("no node runs in this process".into()),
        Some(n) if !n.registered() => {
            return unavailable(
                "the node is not registered (it is rejoining after it was declared lost, or it stopped)"
                    .into(),
            );
        }
        Some(_) => {}
    }
    match tokio::time::timeout(PING_TIMEOUT, state.store.ping()).await {
        Err(_) => unavailable(format!(
            "the database did not answer within {}s",
            PING_TIMEOUT.as_secs()
        )),
        Ok(Err(e)) => unavailable(format!("the database is unreachable: {e}")),
        Ok(Ok(())) => answer(StatusCode::OK, None, node.clone()),
    }
}
