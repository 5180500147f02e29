//! The store's clock (invariant 5). On SQLite it is this process's clock; on PostgreSQL the
//! server's `now()`. Tests move it forward instead of sleeping.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use jobward_core::Timestamp;

/// Wall-clock time plus an offset that only tests change.
#[derive(Debug, Default)]
pub struct Clock {
    offset_ms: AtomicI64,
}

impl Clock {
    pub fn now(&self) -> Timestamp {
        chrono::Utc::now() + chrono::TimeDelta::milliseconds(self.offset_ms())
    }

    pub fn offset_ms(&self) -> i64 {
        self.offset_ms.load(Ordering::SeqCst)
    }

    /// Moves this store's notion of `now` forward (tests only: a real deployment never calls it).
    pub fn advance(&self, d: Duration) {
        self.offset_ms
            .fetch_add(d.as_millis() as i64, Ordering::SeqCst);
    }
}
