//! Alerts, to the places users already route them: a generic JSON webhook, a Slack-compatible
//! incoming webhook, or Prometheus Alertmanager (`POST /api/v2/alerts`, with `endsAt` when
//! the job's next run succeeds). Kinds: a missed instant, an overdue run, a run too short, a
//! run failed for good, a run the reaper recovered, health turning `warning`, and `resolved`.
//!
//! Sending never blocks the ledger: alerts go into a bounded queue (dropped, and counted, when
//! it is full) and are posted with retries and backoff; the last deliveries are kept for
//! `GET /api/system/alerts`.

use std::collections::{HashMap, VecDeque};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc};
use tracing::warn;

use crate::metrics;

/// What an alert is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// The reaper (or startup recovery) settled an execution whose owner went silent.
    Recovered,
    /// An execution failed or timed out with no retry left.
    Failed,
    /// Health turned `warning`.
    Health,
    /// An external job's instant saw no start within its grace.
    Missed,
    /// A run is still running past the upper bound of its expected duration.
    Overdue,
    /// A run completed faster than the lower bound of its expected duration.
    TooShort,
    /// The job's next run completed: its open alerts are over.
    Resolved,
}

impl AlertKind {
    pub const ALL: [AlertKind; 7] = [
        AlertKind::Recovered,
        AlertKind::Failed,
        AlertKind::Health,
        AlertKind::Missed,
        AlertKind::Overdue,
        AlertKind::TooShort,
        AlertKind::Resolved,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::Recovered => "recovered",
            AlertKind::Failed => "failed",
            AlertKind::Health => "health",
            AlertKind::Missed => "missed",
            AlertKind::Overdue => "overdue",
            AlertKind::TooShort => "too_short",
            AlertKind::Resolved => "resolved",
        }
    }
    /// The Alertmanager `alertname`.
    fn alertname(self) -> &'static str {
        match self {
            AlertKind::Recovered => "JobwardRunRecovered",
            AlertKind::Failed => "JobwardRunFailed",
            AlertKind::Health => "JobwardHealthWarning",
            AlertKind::Missed => "JobwardRunMissed",
            AlertKind::Overdue => "JobwardRunOverdue",
            AlertKind::TooShort => "JobwardRunTooShort",
            AlertKind::Resolved => "JobwardResolved",
        }
    }
    fn severity(self) -> &'static str {
        match self {
            AlertKind::Failed | AlertKind::Missed | AlertKind::Recovered => "critical",
            _ => "warning",
        }
    }
}

impl FromStr for AlertKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        AlertKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown alert event '{s}' (expected recovered, failed, health, missed, overdue, too_short or resolved)"
                )
            })
    }
}

/// How a sink wants its alerts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SinkKind {
    /// `{"event", "at", "job", "summary", "data"}`.
    Json,
    /// A Slack-compatible incoming webhook: `{"text": ...}`.
    Slack,
    /// Prometheus Alertmanager's `POST /api/v2/alerts`.
    Alertmanager,
}

impl FromStr for SinkKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "json" | "webhook" => Ok(SinkKind::Json),
            "slack" => Ok(SinkKind::Slack),
            "alertmanager" => Ok(SinkKind::Alertmanager),
            _ => Err(format!(
                "unknown alert kind '{s}' (expected json, slack or alertmanager)"
            )),
        }
    }
}

/// One place alerts go.
#[derive(Debug, Clone)]
pub struct Webhook {
    pub url: String,
    pub on: Vec<AlertKind>,
    pub kind: SinkKind,
}

impl Webhook {
    /// Where it posts: an Alertmanager's base URL gets `/api/v2/alerts`.
    fn target(&self) -> String {
        match self.kind {
            SinkKind::Alertmanager
                if !self.url.trim_end_matches('/').ends_with("/api/v2/alerts") =>
            {
                format!("{}/api/v2/alerts", self.url.trim_end_matches('/'))
            }
            _ => self.url.clone(),
        }
    }
}

/// An alert, before a sink shapes it.
#[derive(Debug, Clone)]
struct Alert {
    kind: AlertKind,
    job: Option<String>,
    summary: String,
    data: Value,
    at: DateTime<Utc>,
    /// For `resolved`: the kinds it ends, and when each began.
    ends: Vec<(AlertKind, DateTime<Utc>)>,
}

/// One delivery, as `GET /api/system/alerts` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Delivery {
    pub id: u64,
    pub event: AlertKind,
    pub job: Option<String>,
    pub summary: String,
    pub sink: SinkKind,
    /// The sink's host (the rest of a webhook URL may be a secret).
    pub sink_host: String,
    pub queued_at: DateTime<Utc>,
    pub last_attempt_at: Option<DateTime<Utc>>,
    pub attempts: u32,
    /// pending, sent or failed.
    pub status: &'static str,
    /// The last answer's HTTP status, or why it could not be sent.
    pub last_result: Option<String>,
}

struct Shared {
    deliveries: Mutex<VecDeque<Delivery>>,
    next: Mutex<u64>,
    /// Open alerts per (job, kind), with when they began: `resolved` ends them.
    open: Mutex<HashMap<(String, AlertKind), DateTime<Utc>>>,
    sinks: Vec<Webhook>,
}

/// The sending side; cheap to clone.
#[derive(Clone)]
pub struct Alerts {
    tx: mpsc::Sender<Alert>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Alerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Alerts")
    }
}

const QUEUE: usize = 1000;
const ATTEMPTS: u32 = 4;
const KEPT: usize = 200;

fn host_of(url: &str) -> String {
    url.split("://")
        .nth(1)
        .unwrap_or(url)
        .split(['/', '?'])
        .next()
        .unwrap_or("")
        .rsplit('@')
        .next()
        .unwrap_or("")
        .to_string()
}

impl Alerts {
    /// Starts the delivery task. `None` when no sink is configured.
    pub fn start(hooks: Vec<Webhook>) -> Option<Alerts> {
        if hooks.is_empty() {
            return None;
        }
        let (tx, mut rx) = mpsc::channel::<Alert>(QUEUE);
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .ok()?;
        let shared = Arc::new(Shared {
            deliveries: Mutex::new(VecDeque::new()),
            next: Mutex::new(0),
            open: Mutex::new(HashMap::new()),
            sinks: hooks,
        });
        let slots = Arc::new(Semaphore::new(8));
        let task = shared.clone();
        tokio::spawn(async move {
            while let Some(alert) = rx.recv().await {
                for hook in task.sinks.iter().filter(|h| h.on.contains(&alert.kind)) {
                    let Ok(permit) = slots.clone().acquire_owned().await else {
                        return;
                    };
                    let id = task.record(&alert, hook);
                    let (client, hook, alert, shared) =
                        (client.clone(), hook.clone(), alert.clone(), task.clone());
                    tokio::spawn(async move {
                        let _permit = permit;
                        deliver(&client, &hook, &alert, &shared, id).await;
                    });
                }
            }
        });
        Some(Alerts { tx, shared })
    }

    /// Queues an alert about `job` (or the system); never waits. Alerts about a job stay
    /// open until `resolve_job`.
    pub fn send_about(&self, kind: AlertKind, job: Option<&str>, summary: String, data: Value) {
        let at = Utc::now();
        if let Some(j) = job
            && kind != AlertKind::Resolved
            && kind != AlertKind::Health
        {
            self.shared
                .open
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry((j.to_string(), kind))
                .or_insert(at);
        }
        self.queue(Alert {
            kind,
            job: job.map(str::to_string),
            summary,
            data,
            at,
            ends: vec![],
        });
    }

    /// An alert without a job (health).
    pub fn send(&self, kind: AlertKind, data: Value) {
        self.send_about(kind, None, format!("jobward: {}", kind.as_str()), data);
    }

    /// The job's run completed: every alert still open about it is resolved (one `resolved`
    /// alert naming them; Alertmanager gets each with `endsAt`).
    pub fn resolve_job(&self, job: &str, data: Value) {
        let ends: Vec<(AlertKind, DateTime<Utc>)> = {
            let mut open = self.shared.open.lock().unwrap_or_else(|e| e.into_inner());
            let kinds: Vec<AlertKind> = open
                .keys()
                .filter(|(j, _)| j == job)
                .map(|(_, k)| *k)
                .collect();
            kinds
                .into_iter()
                .filter_map(|k| open.remove(&(job.to_string(), k)).map(|at| (k, at)))
                .collect()
        };
        if ends.is_empty() {
            return;
        }
        let names: Vec<&str> = ends.iter().map(|(k, _)| k.as_str()).collect();
        self.queue(Alert {
            kind: AlertKind::Resolved,
            job: Some(job.to_string()),
            summary: format!(
                "job '{job}' completed a run: resolved ({})",
                names.join(", ")
            ),
            data,
            at: Utc::now(),
            ends,
        });
    }

    fn queue(&self, alert: Alert) {
        let kind = alert.kind;
        if self.tx.try_send(alert).is_err() {
            metrics::alert("dropped");
            warn!(event = kind.as_str(), "alert queue full: alert dropped");
        }
    }

    /// The configured sinks (kind, host, kinds sent) and the last deliveries, newest first.
    pub fn report(&self) -> Value {
        let deliveries: Vec<Delivery> = self
            .shared
            .deliveries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .rev()
            .cloned()
            .collect();
        let sinks: Vec<Value> = self
            .shared
            .sinks
            .iter()
            .map(|s| {
                json!({
                    "kind": s.kind,
                    "host": host_of(&s.url),
                    "on": s.on.iter().map(|k| k.as_str()).collect::<Vec<_>>(),
                })
            })
            .collect();
        json!({ "sinks": sinks, "deliveries": deliveries })
    }
}

impl Shared {
    fn record(&self, alert: &Alert, hook: &Webhook) -> u64 {
        let id = {
            let mut n = self.next.lock().unwrap_or_else(|e| e.into_inner());
            *n += 1;
            *n
        };
        let mut d = self.deliveries.lock().unwrap_or_else(|e| e.into_inner());
        if d.len() >= KEPT {
            d.pop_front();
        }
        d.push_back(Delivery {
            id,
            event: alert.kind,
            job: alert.job.clone(),
            summary: alert.summary.clone(),
            sink: hook.kind,
            sink_host: host_of(&hook.url),
            queued_at: Utc::now(),
            last_attempt_at: None,
            attempts: 0,
            status: "pending",
            last_result: None,
        });
        id
    }

    fn update(&self, id: u64, f: impl FnOnce(&mut Delivery)) {
        let mut d = self.deliveries.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(x) = d.iter_mut().find(|x| x.id == id) {
            f(x);
        }
    }
}

/// The body a sink gets.
fn body(hook: &Webhook, a: &Alert) -> Value {
    match hook.kind {
        SinkKind::Json => json!({
            "event": a.kind.as_str(),
            "at": a.at,
            "job": a.job,
            "summary": a.summary,
            "data": a.data,
            "resolves": a.ends.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
        }),
        SinkKind::Slack => {
            let mark = match a.kind {
                AlertKind::Resolved => ":white_check_mark:",
                AlertKind::Overdue | AlertKind::TooShort | AlertKind::Health => ":warning:",
                _ => ":rotating_light:",
            };
            json!({ "text": format!("{mark} jobward: {}", a.summary) })
        }
        SinkKind::Alertmanager => {
            let one = |kind: AlertKind, starts: DateTime<Utc>, ends: Option<DateTime<Utc>>| {
                let mut labels = json!({
                    "alertname": kind.alertname(),
                    "severity": kind.severity(),
                    "source": "jobward",
                });
                if let Some(j) = &a.job {
                    labels["job"] = json!(j);
                }
                let mut v = json!({
                    "labels": labels,
                    "annotations": { "summary": a.summary, "event": kind.as_str() },
                    "startsAt": starts,
                });
                if let Some(e) = ends {
                    v["endsAt"] = json!(e);
                }
                v
            };
            if a.kind == AlertKind::Resolved {
                Value::Array(
                    a.ends
                        .iter()
                        .map(|(k, s)| one(*k, *s, Some(a.at)))
                        .collect(),
                )
            } else {
                json!([one(a.kind, a.at, None)])
            }
        }
    }
}

async fn deliver(client: &reqwest::Client, hook: &Webhook, a: &Alert, shared: &Shared, id: u64) {
    let url = hook.target();
    let body = body(hook, a);
    let mut delay = Duration::from_secs(1);
    for attempt in 1..=ATTEMPTS {
        let result = client.post(&url).json(&body).send().await;
        let (ok, said) = match &result {
            Ok(r) => (r.status().is_success(), r.status().to_string()),
            Err(e) => (false, e.to_string().replace(&url, &host_of(&url))),
        };
        shared.update(id, |d| {
            d.attempts = attempt;
            d.last_attempt_at = Some(Utc::now());
            d.last_result = Some(said.clone());
            if ok {
                d.status = "sent";
            }
        });
        if ok {
            metrics::alert("sent");
            return;
        }
        warn!(host = %host_of(&url), result = %said, attempt, event = a.kind.as_str(), "alert not delivered");
        if attempt < ATTEMPTS {
            tokio::time::sleep(delay).await;
            delay *= 2;
        }
    }
    shared.update(id, |d| d.status = "failed");
    metrics::alert("failed");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alertmanager_bodies_fire_and_resolve() {
        let hook = Webhook {
            url: "http://am:9093".into(),
            on: AlertKind::ALL.to_vec(),
            kind: SinkKind::Alertmanager,
        };
        assert_eq!(hook.target(), "http://am:9093/api/v2/alerts");
        let at = Utc::now();
        let fire = Alert {
            kind: AlertKind::Overdue,
            job: Some("backup".into()),
            summary: "s".into(),
            data: Value::Null,
            at,
            ends: vec![],
        };
        let b = body(&hook, &fire);
        assert_eq!(b[0]["labels"]["alertname"], "JobwardRunOverdue");
        assert_eq!(b[0]["labels"]["job"], "backup");
        assert!(b[0].get("endsAt").is_none());
        let resolve = Alert {
            kind: AlertKind::Resolved,
            ends: vec![(AlertKind::Overdue, at)],
            ..fire
        };
        let b = body(&hook, &resolve);
        assert_eq!(b[0]["labels"]["alertname"], "JobwardRunOverdue");
        assert!(b[0]["endsAt"].is_string());
        assert_eq!(
            host_of("https://user:pw@hooks.slack.com/services/T/B/X"),
            "hooks.slack.com"
        );
    }
}
