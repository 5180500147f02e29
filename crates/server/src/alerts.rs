//! Webhook alerts: when the reaper recovers an execution, when an execution fails its last
//! attempt, and when health turns `warning`. Sending never blocks the ledger: events go into a
//! bounded queue (dropped, and counted, when it is full) and are posted with retries.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc};
use tracing::warn;

use crate::metrics;

/// What an alert is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertKind {
    /// The reaper (or startup recovery) settled an execution whose owner went silent.
    Recovered,
    /// An execution failed or timed out with no retry left.
    Failed,
    /// Health turned `warning`.
    Health,
}

impl AlertKind {
    pub const ALL: [AlertKind; 3] = [AlertKind::Recovered, AlertKind::Failed, AlertKind::Health];
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::Recovered => "recovered",
            AlertKind::Failed => "failed",
            AlertKind::Health => "health",
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
                format!("unknown alert event '{s}' (expected recovered, failed or health)")
            })
    }
}

/// One webhook.
#[derive(Debug, Clone)]
pub struct Webhook {
    pub url: String,
    pub on: Vec<AlertKind>,
}

/// The sending side; cheap to clone.
#[derive(Clone)]
pub struct Alerts {
    tx: mpsc::Sender<(AlertKind, Value)>,
}

impl std::fmt::Debug for Alerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Alerts")
    }
}

const QUEUE: usize = 1000;
const ATTEMPTS: u32 = 4;

impl Alerts {
    /// Starts the delivery task. `None` when no webhook is configured.
    pub fn start(hooks: Vec<Webhook>) -> Option<Alerts> {
        if hooks.is_empty() {
            return None;
        }
        let (tx, mut rx) = mpsc::channel::<(AlertKind, Value)>(QUEUE);
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .ok()?;
        let hooks = Arc::new(hooks);
        let slots = Arc::new(Semaphore::new(8));
        tokio::spawn(async move {
            while let Some((kind, body)) = rx.recv().await {
                for hook in hooks.iter().filter(|h| h.on.contains(&kind)) {
                    let Ok(permit) = slots.clone().acquire_owned().await else {
                        return;
                    };
                    let (client, url, body) = (client.clone(), hook.url.clone(), body.clone());
                    tokio::spawn(async move {
                        let _permit = permit;
                        deliver(&client, &url, &body).await;
                    });
                }
            }
        });
        Some(Alerts { tx })
    }

    /// Queues an alert; never waits.
    pub fn send(&self, kind: AlertKind, body: Value) {
        let body = json!({ "event": kind.as_str(), "at": chrono::Utc::now(), "data": body });
        if self.tx.try_send((kind, body)).is_err() {
            metrics::alert("dropped");
            warn!(event = kind.as_str(), "alert queue full: alert dropped");
        }
    }
}

async fn deliver(client: &reqwest::Client, url: &str, body: &Value) {
    let mut delay = Duration::from_secs(1);
    for attempt in 1..=ATTEMPTS {
        match client.post(url).json(body).send().await {
            Ok(r) if r.status().is_success() => {
                metrics::alert("sent");
                return;
            }
            Ok(r) => warn!(url, status = %r.status(), attempt, "webhook refused the alert"),
            Err(e) => warn!(url, error = %e, attempt, "webhook unreachable"),
        }
        if attempt < ATTEMPTS {
            tokio::time::sleep(delay).await;
            delay *= 2;
        }
    }
    metrics::alert("failed");
}
