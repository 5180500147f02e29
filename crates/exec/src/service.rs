//! What a runner (a node or a worker) tells the service manager that started it (systemd's
//! `Type=notify` protocol, through `sd-notify`): READY=1 once it is really ready, WATCHDOG=1
//! only while its main loop keeps completing ticks, STOPPING=1 when it begins a graceful
//! shutdown. Without `NOTIFY_SOCKET` every call does nothing.
//!
//! The service manager's variables are never passed on to executions (`spawn` removes
//! them): a job that called `systemd-notify` would otherwise speak for jobward.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sd_notify::NotifyState;

/// Variables of the service manager that an execution must not inherit.
pub const SERVICE_MANAGER_VARS: [&str; 3] = ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"];

/// READY=1, with a one-line status.
pub fn ready(status: &str) {
    let _ = sd_notify::notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// STOPPING=1, with a one-line status.
pub fn stopping(status: &str) {
    let _ = sd_notify::notify(&[NotifyState::Stopping, NotifyState::Status(status)]);
}

/// How often the service manager expects WATCHDOG=1 (`WatchdogSec`), when it does.
pub fn watchdog_timeout() -> Option<Duration> {
    sd_notify::watchdog_enabled().filter(|d| !d.is_zero())
}

/// When a main loop last completed a tick. The watchdog is fed only while that is recent, so
/// a loop that hangs (a stuck database call, a deadlock) gets the process restarted.
#[derive(Debug)]
pub struct Liveness {
    origin: Instant,
    last_ms: AtomicU64,
}

impl Default for Liveness {
    fn default() -> Self {
        Liveness {
            origin: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }
}

impl Liveness {
    /// A loop completed a tick now.
    pub fn beat(&self) {
        let ms = self.origin.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::SeqCst);
    }

    /// Time since the last completed tick (since creation before the first).
    pub fn age(&self) -> Duration {
        let now = self.origin.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_ms.load(Ordering::SeqCst)))
    }
}

/// Feeds the watchdog (every half `WatchdogSec`) while the watched loop completed a tick
/// within `WatchdogSec` (`age` says how long ago). Returns `None` when no watchdog is asked
/// for.
pub fn spawn_watchdog(
    age: impl Fn() -> Duration + Send + 'static,
) -> Option<tokio::task::JoinHandle<()>> {
    let timeout = watchdog_timeout()?;
    Some(tokio::spawn(async move {
        let mut stuck = false;
        loop {
            tokio::time::sleep(timeout / 2).await;
            let age = age();
            if age < timeout {
                let _ = sd_notify::notify(&[NotifyState::Watchdog]);
                stuck = false;
            } else if !stuck {
                stuck = true;
                tracing::error!(
                    last_tick_ago = ?age,
                    "the main loop has not completed a tick within WatchdogSec; no longer feeding the watchdog"
                );
            }
        }
    }))
}
