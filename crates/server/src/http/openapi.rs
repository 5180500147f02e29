//! The OpenAPI document, generated from the handlers' and wire types' annotations.

use axum::response::IntoResponse;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{api, probes, worker};

struct Bearer;

impl Modify for Bearer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "jobward",
        description = "A job scheduler and execution ledger: every execution reaches a terminal state with a true record. \
            Errors are always {\"error\": {\"code\", \"message\"}}. When tokens are configured, send Authorization: Bearer TOKEN \
            (roles: read; operate, which includes read; admin, which includes operate and defines jobs; worker, the worker protocol only)."
    ),
    paths(
        api::health, api::running, api::cleanup, api::reload,
        api::jobs, api::job, api::trigger, api::trigger_batch, api::pause, api::resume,
        super::manage::put_job, super::manage::patch_job, super::manage::delete_job,
        super::manage::backfill, super::manage::patch_execution, super::manage::nodes,
        super::external::start, super::external::heartbeat, super::external::complete,
        super::external::ping, super::external::alerts, super::manage::retry,
        super::manage::queues,
        api::executions, api::execution, api::events, api::log, api::cancel, api::progress,
        worker::claim, worker::heartbeat, worker::complete, worker::complete_batch, worker::exchange,
        worker::release,
        super::metrics_endpoint, document, probes::livez, probes::readyz,
    ),
    modifiers(&Bearer),
    security(("bearer" = [])),
    tags(
        (name = "system", description = "health, running executions, stale cleanup, reload, metrics, liveness and readiness probes"),
        (name = "jobs", description = "job definitions (from the configuration file, or created through the API with the admin role), triggers, delayed runs and backfills"),
        (name = "executions", description = "executions, their events and logs"),
        (name = "external", description = "runs outside jobward: `jobward exec` (start, heartbeats and an end proven by the run's lease token) and pings with a job's ping token"),
        (name = "worker", description = "the worker protocol: claim, heartbeat, complete (one, or a batch), exchange (complete a batch and claim the next in one call), release"),
    )
)]
pub struct ApiDoc;

#[utoipa::path(get, path = "/api/openapi.json", tag = "system",
    responses((status = 200, description = "this document", body = Object),
              (status = "default", description = "an error", body = jobward_protocol::ErrorBody)))]
pub async fn document() -> impl IntoResponse {
    axum::Json(ApiDoc::openapi())
}
