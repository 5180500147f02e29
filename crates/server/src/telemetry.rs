//! OpenTelemetry traces of executions, exported over OTLP/HTTP when an endpoint is configured.
//!
//! One trace per execution (a job's run number, across its attempts):
//!
//! ```text
//! trigger  (first queued .. final end; emitted when the last attempt ends)
//! ├── queued   (attempt N: queued .. started, or .. its end when it never started)
//! └── run      (attempt N: started .. finished; an "end" event with state and reason;
//!               linked to attempt N-1's run)
//! ```
//!
//! Nothing about traces is stored in the ledger: the ids are derived from what every node
//! already knows, so every node computes the same ones. The trace id is a hash of the service
//! name (one per deployment), the job and the run number; a span id is a hash of the
//! execution id and the span's kind. Spans are built after the fact from the terminal row
//! (`queued_at`, `started_at`, `finished_at`, state, reason) by `execution_ended`, which every
//! place that observes a terminal transition calls. The run span is the parent announced to
//! the process as W3C `TRACEPARENT`, to local children directly and to remote workers in their
//! claim response.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use jobward_core::{State, Timestamp};
use jobward_store::{DynStore, ExecutionId, ExecutionRow, Recovered, Settled};
use opentelemetry::trace::{
    Event, Link, SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SpanData, SpanEvents, SpanLinks, SpanProcessor,
};
use sha2::{Digest, Sha256};

/// Where traces go and under which service name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelemetryConfig {
    /// The OTLP/HTTP base URL, e.g. `http://127.0.0.1:4318`; spans go to `/v1/traces`.
    pub otlp_endpoint: String,
    /// `service.name`, and the seed of trace ids: every node of one deployment must use the
    /// same (default `jobward`).
    pub service_name: String,
}

struct Exporter {
    processor: BatchSpanProcessor,
    service: String,
    scope: InstrumentationScope,
}

static EXPORTER: OnceLock<Exporter> = OnceLock::new();

/// Starts exporting (once per process). Spans are batched and sent from the SDK's own
/// thread; an unreachable collector costs dropped spans, never a stalled ledger.
pub fn init(cfg: &TelemetryConfig) -> Result<(), String> {
    use opentelemetry_otlp::WithExportConfig;
    if EXPORTER.get().is_some() {
        return Ok(());
    }
    let url = format!("{}/v1/traces", cfg.otlp_endpoint.trim_end_matches('/'));
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(url.clone())
        .with_timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| format!("OTLP exporter for {url}: {e}"))?;
    let mut processor = BatchSpanProcessor::builder(exporter)
        .with_batch_config(
            BatchConfigBuilder::default()
                .with_scheduled_delay(Duration::from_millis(500))
                .build(),
        )
        .build();
    processor.set_resource(
        &Resource::builder_empty()
            .with_service_name(cfg.service_name.clone())
            .build(),
    );
    let _ = EXPORTER.set(Exporter {
        processor,
        service: cfg.service_name.clone(),
        scope: InstrumentationScope::builder("jobward")
            .with_version(env!("CARGO_PKG_VERSION"))
            .build(),
    });
    tracing::info!(endpoint = %url, service = %cfg.service_name, "exporting execution traces over OTLP/HTTP");
    Ok(())
}

/// Whether traces are exported.
pub fn enabled() -> bool {
    EXPORTER.get().is_some()
}

/// Sends what is batched and stops exporting (blocking: call it off the async threads).
pub fn shutdown() {
    if let Some(e) = EXPORTER.get() {
        let _ = e.processor.force_flush();
        let _ = e.processor.shutdown();
    }
}

fn digest(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p);
    }
    h.finalize().into()
}

/// The trace of a job's run number: the same on every node of the deployment.
pub fn trace_id(service: &str, job: &str, number: i64) -> TraceId {
    let d = digest(&[
        b"trace",
        service.as_bytes(),
        job.as_bytes(),
        &number.to_be_bytes(),
    ]);
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    if b == [0; 16] {
        b[15] = 1;
    }
    TraceId::from_bytes(b)
}

/// The kinds of span an execution has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanOf {
    /// The root of a run number's trace (seeded by the job and number, not an execution).
    Trigger,
    Queued,
    Run,
}

/// A span's id: a hash of the execution id (for `Trigger`, of the job and run number).
pub fn span_id(service: &str, job: &str, number: i64, id: ExecutionId, kind: SpanOf) -> SpanId {
    let d = match kind {
        SpanOf::Trigger => digest(&[
            b"trigger",
            service.as_bytes(),
            job.as_bytes(),
            &number.to_be_bytes(),
        ]),
        SpanOf::Queued => digest(&[b"queued", service.as_bytes(), &id.to_be_bytes()]),
        SpanOf::Run => digest(&[b"run", service.as_bytes(), &id.to_be_bytes()]),
    };
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    if b == [0; 8] {
        b[7] = 1;
    }
    SpanId::from_bytes(b)
}

/// The W3C trace context of an execution's run span: `00-TRACE-SPAN-01`.
pub fn traceparent_of(service: &str, job: &str, number: i64, id: ExecutionId) -> String {
    format!(
        "00-{}-{}-01",
        trace_id(service, job, number),
        span_id(service, job, number, id, SpanOf::Run)
    )
}

/// The `TRACEPARENT` given to an execution's process, when traces are exported.
pub fn traceparent(row: &ExecutionRow) -> Option<String> {
    let e = EXPORTER.get()?;
    Some(traceparent_of(&e.service, &row.job, row.number, row.id))
}

fn system_time(t: Timestamp) -> SystemTime {
    let ms = t.timestamp_millis().max(0) as u64;
    SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
}

fn context(trace: TraceId, span: SpanId) -> SpanContext {
    SpanContext::new(
        trace,
        span,
        TraceFlags::SAMPLED,
        false,
        TraceState::default(),
    )
}

/// The spans of one attempt that reached its terminal state: its `queued` and `run` spans,
/// and the `trigger` root when `first_queued_at` is given (it was the last attempt).
pub fn spans_of(
    service: &str,
    scope: &InstrumentationScope,
    row: &ExecutionRow,
    first_queued_at: Option<Timestamp>,
) -> Vec<SpanData> {
    let Some(finished) = row.finished_at else {
        return vec![];
    };
    let trace = trace_id(service, &row.job, row.number);
    let root = span_id(service, &row.job, row.number, row.id, SpanOf::Trigger);
    let common = vec![
        KeyValue::new("jobward.job", row.job.clone()),
        KeyValue::new("jobward.run_number", row.number),
        KeyValue::new("jobward.execution_id", row.id),
        KeyValue::new("jobward.attempt", row.attempt as i64),
    ];
    let outcome = {
        let mut kv = vec![KeyValue::new("jobward.state", row.state.to_string())];
        if let Some(r) = row.reason {
            kv.push(KeyValue::new("jobward.reason", r.to_string()));
        }
        if let Some(m) = &row.message {
            kv.push(KeyValue::new("jobward.message", m.clone()));
        }
        if let Some(c) = row.exit_code {
            kv.push(KeyValue::new("process.exit.code", c as i64));
        }
        if let Some(s) = row.signal {
            kv.push(KeyValue::new("jobward.signal", s as i64));
        }
        kv
    };
    let status = if row.state == State::Completed {
        Status::Ok
    } else {
        Status::error(format!(
            "{}{}",
            row.state,
            row.reason.map(|r| format!(" ({r})")).unwrap_or_default()
        ))
    };
    let span = |kind: SpanOf,
                name: &'static str,
                parent: SpanId,
                start: Timestamp,
                end: Timestamp,
                attributes: Vec<KeyValue>,
                events: Vec<Event>,
                links: Vec<Link>,
                status: Status| SpanData {
        span_context: context(trace, span_id(service, &row.job, row.number, row.id, kind)),
        parent_span_id: parent,
        parent_span_is_remote: false,
        span_kind: SpanKind::Internal,
        name: name.into(),
        start_time: system_time(start),
        end_time: system_time(end.max(start)),
        attributes,
        dropped_attributes_count: 0,
        events: {
            let mut e = SpanEvents::default();
            e.events = events;
            e
        },
        links: {
            let mut l = SpanLinks::default();
            l.links = links;
            l
        },
        status,
        instrumentation_scope: scope.clone(),
    };
    let end_event = Event::new("end", system_time(finished), outcome.clone(), 0);
    let mut out = Vec::new();
    let queued_end = row.started_at.unwrap_or(finished);
    let mut queued_attrs = common.clone();
    queued_attrs.push(KeyValue::new("jobward.trigger", row.trigger.to_string()));
    out.push(span(
        SpanOf::Queued,
        "queued",
        root,
        row.queued_at,
        queued_end,
        queued_attrs,
        if row.started_at.is_none() {
            vec![end_event.clone()]
        } else {
            vec![]
        },
        vec![],
        if row.started_at.is_none() {
            status.clone()
        } else {
            Status::Unset
        },
    ));
    if let Some(started) = row.started_at {
        let links = row
            .retry_of
            .map(|prev| {
                vec![Link::new(
                    context(
                        trace,
                        span_id(service, &row.job, row.number, prev, SpanOf::Run),
                    ),
                    vec![KeyValue::new("jobward.link", "retry_of")],
                    0,
                )]
            })
            .unwrap_or_default();
        let mut attrs = common.clone();
        attrs.extend(outcome.clone());
        if let Some(owner) = row.ended_by.clone().or_else(|| row.lease_owner.clone()) {
            attrs.push(KeyValue::new("jobward.owner", owner));
        }
        out.push(span(
            SpanOf::Run,
            "run",
            root,
            started,
            finished,
            attrs,
            vec![end_event],
            links,
            status.clone(),
        ));
    }
    if let Some(first) = first_queued_at {
        let mut attrs = vec![
            KeyValue::new("jobward.job", row.job.clone()),
            KeyValue::new("jobward.run_number", row.number),
            KeyValue::new("jobward.attempts", row.attempt as i64),
            KeyValue::new("jobward.trigger", row.trigger.to_string()),
        ];
        attrs.extend(outcome);
        out.push(span(
            SpanOf::Trigger,
            "trigger",
            SpanId::INVALID,
            first,
            finished,
            attrs,
            vec![],
            vec![],
            status,
        ));
    }
    out
}

/// The one place an execution's terminal state becomes spans. `retry` is the attempt that
/// follows it, if any: the root `trigger` span is emitted with the last attempt only.
/// Does nothing unless traces are exported; never blocks (a retried execution's first
/// attempt is read from the ledger in a task).
pub fn execution_ended(store: &DynStore, row: &ExecutionRow, retry: Option<ExecutionId>) {
    let Some(e) = EXPORTER.get() else {
        return;
    };
    if !row.state.is_terminal() {
        return;
    }
    let last = retry.is_none();
    if !last || row.retry_of.is_none() {
        let first = last.then_some(row.queued_at);
        for span in spans_of(&e.service, &e.scope, row, first) {
            e.processor.on_end(span);
        }
        return;
    }
    // The last of several attempts: the root starts when the first attempt was queued.
    let (store, row) = (store.clone(), row.clone());
    tokio::spawn(async move {
        let mut first = row.queued_at;
        let mut prev = row.retry_of;
        let mut hops = 0;
        while let (Some(id), true) = (prev, hops < 1000) {
            match store.get_execution(id).await {
                Ok(Some(p)) => {
                    first = p.queued_at;
                    prev = p.retry_of;
                }
                _ => break,
            }
            hops += 1;
        }
        for span in spans_of(&e.service, &e.scope, &row, Some(first)) {
            e.processor.on_end(span);
        }
    });
}

/// After a settled report (a completion, a hand-back, a cancel).
pub fn settled(store: &DynStore, s: &Settled) {
    execution_ended(store, &s.execution, s.retry.as_ref().map(|r| r.id));
}

/// Executions known by id only (the reaper's, a lost node's, startup recovery's, skipped
/// fires): read back, then `execution_ended`.
pub fn ended_ids(store: &DynStore, ids: &[(ExecutionId, Option<ExecutionId>)]) {
    if !enabled() || ids.is_empty() {
        return;
    }
    let (store, ids) = (store.clone(), ids.to_vec());
    tokio::spawn(async move {
        for (id, retry) in ids {
            if let Ok(Some(row)) = store.get_execution(id).await {
                execution_ended(&store, &row, retry);
            }
        }
    });
}

/// Executions settled for an owner that went silent.
pub fn recovered(store: &DynStore, recs: &[Recovered]) {
    let ids: Vec<_> = recs.iter().map(|r| (r.id, r.retry)).collect();
    ended_ids(store, &ids);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_deterministic_and_distinct() {
        let a = trace_id("jobward", "report", 7);
        assert_eq!(
            a,
            trace_id("jobward", "report", 7),
            "every node computes the same"
        );
        assert_ne!(a, trace_id("jobward", "report", 8));
        assert_ne!(a, trace_id("jobward", "reporT", 7));
        assert_ne!(a, trace_id("other-deployment", "report", 7));
        let run = span_id("jobward", "report", 7, 42, SpanOf::Run);
        assert_eq!(run, span_id("jobward", "report", 7, 42, SpanOf::Run));
        assert_ne!(run, span_id("jobward", "report", 7, 42, SpanOf::Queued));
        assert_ne!(run, span_id("jobward", "report", 7, 43, SpanOf::Run));
        let tp = traceparent_of("jobward", "report", 7, 42);
        assert_eq!(tp, format!("00-{a}-{run}-01"));
        assert_eq!(tp.len(), 55);
    }
}
