//! Who to wake when work becomes claimable. A commit that queued executions (or freed a slot)
//! names the runner ("local", or a queue) and how many: one claimer is woken per new
//! execution, only among those waiting for that runner. A node's own executor waits for
//! "local" and is not woken by work for remote queues; a long-polling worker waits for its
//! queues only. Waking is a hint: claimers still poll now and then, so a lost wake-up costs
//! latency, never work.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// Claimers' doorbells, one per runner.
#[derive(Default)]
pub struct WorkSignal {
    runners: Mutex<HashMap<String, Arc<Notify>>>,
    /// Rung on any work, for those who watch everything (tests, the dashboard's live view).
    any: Notify,
}

impl WorkSignal {
    pub fn new() -> Arc<WorkSignal> {
        Arc::new(WorkSignal::default())
    }

    fn bell(&self, runner: &str) -> Arc<Notify> {
        self.runners
            .lock()
            .expect("work signal")
            .entry(runner.to_string())
            .or_default()
            .clone()
    }

    /// `count` executions of `runner` may have become claimable: wake up to that many of its
    /// claimers (one stays notified if none waits now).
    pub fn notify(&self, runner: &str, count: usize) {
        let bell = self.bell(runner);
        for _ in 0..count.clamp(1, 64) {
            bell.notify_one();
        }
        self.any.notify_waiters();
    }

    /// Everything may have changed (a listener reconnected and may have missed notices):
    /// wake every claimer of every runner.
    pub fn notify_all(&self) {
        for bell in self.runners.lock().expect("work signal").values() {
            bell.notify_waiters();
            bell.notify_one();
        }
        self.any.notify_waiters();
    }

    /// Resolves when work for any of `runners` may be claimable.
    pub async fn notified(&self, runners: &[String]) {
        let bells: Vec<Arc<Notify>> = runners.iter().map(|r| self.bell(r)).collect();
        match bells.len() {
            0 => std::future::pending().await,
            1 => bells[0].notified().await,
            _ => {
                let waits: Vec<_> = bells.iter().map(|b| Box::pin(b.notified())).collect();
                futures_select_any(waits).await
            }
        }
    }

    /// Resolves on any work at all.
    pub async fn any(&self) {
        self.any.notified().await
    }
}

/// Waits for the first of several futures (a small `select_all`, to keep the store free of a
/// futures crate).
async fn futures_select_any<F: std::future::Future<Output = ()> + Unpin>(mut futs: Vec<F>) {
    std::future::poll_fn(|cx| {
        for f in futs.iter_mut() {
            if std::pin::Pin::new(f).poll(cx).is_ready() {
                return std::task::Poll::Ready(());
            }
        }
        std::task::Poll::Pending
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_runner_wakes_its_own_claimers_only() {
        let s = WorkSignal::new();
        let local = {
            let s = s.clone();
            tokio::spawn(async move { s.notified(&["local".into()]).await })
        };
        let queue = {
            let s = s.clone();
            tokio::spawn(async move { s.notified(&["a".into(), "b".into()]).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        s.notify("b", 1);
        tokio::time::timeout(Duration::from_secs(1), queue)
            .await
            .expect("the queue's claimer woke")
            .unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            !local.is_finished(),
            "work for a queue does not wake the local runner"
        );
        s.notify("local", 1);
        tokio::time::timeout(Duration::from_secs(1), local)
            .await
            .expect("the local runner woke")
            .unwrap();
    }
}
