//! The tasks of a channel: those running (in-flight slots) and those waiting for a slot, and
//! the drain at shutdown.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::AbortHandle;

use super::Channel;
use crate::connect::protocol::Task;
use crate::connect::tasks;

pub(super) struct InFlight {
    pub(super) task: Arc<Task>,
    pub(super) abort: Option<AbortHandle>,
}

/// Tasks read while every slot is busy, oldest first: at most `cap` tasks and `cap_bytes` bytes
/// of frames (one task is always admitted).
pub(super) struct Waiting {
    pub(super) queue: VecDeque<(Box<Task>, usize)>,
    pub(super) bytes: usize,
    pub(super) cap: usize,
    pub(super) cap_bytes: usize,
}

impl Waiting {
    pub(super) fn new(cap: usize, cap_bytes: usize) -> Self {
        Self {
            queue: VecDeque::new(),
            bytes: 0,
            cap,
            cap_bytes,
        }
    }
    pub(super) fn len(&self) -> usize {
        self.queue.len()
    }
    pub(super) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
    /// Queues `task` (its frame was `bytes` long), or hands it back when full.
    pub(super) fn push(&mut self, task: Box<Task>, bytes: usize) -> Result<(), Box<Task>> {
        let fits = self.queue.len() < self.cap
            && (self.queue.is_empty() || self.bytes.saturating_add(bytes) <= self.cap_bytes);
        if !fits {
            return Err(task);
        }
        self.bytes = self.bytes.saturating_add(bytes);
        self.queue.push_back((task, bytes));
        Ok(())
    }
    pub(super) fn pop(&mut self) -> Option<Box<Task>> {
        let (task, bytes) = self.queue.pop_front()?;
        self.bytes -= bytes;
        Some(task)
    }
}

impl Channel {
    pub(super) fn in_flight(&self) -> usize {
        self.inflight.lock().expect("inflight lock").len()
    }

    /// Waits for in-flight tasks up to `limit`; tasks still running then are answered `retry`.
    pub(super) async fn drain(&self, limit: Duration) {
        // Closed, the tracker's `wait` ends once no task runs or waits to queue its result. The
        // channel ends after a drain, so it is never reopened.
        self.tasks.close();
        if tokio::time::timeout(limit, self.tasks.wait()).await.is_ok() {
            return;
        }
        let left: Vec<InFlight> = self
            .inflight
            .lock()
            .expect("inflight lock")
            .drain()
            .map(|(_, f)| f)
            .collect();
        if left.is_empty() {
            return;
        }
        tracing::warn!(
            channel = self.name(),
            tasks = left.len(),
            grace_secs = limit.as_secs_f64(),
            "shutdown deadline reached: answering unfinished tasks `retry` so the platform redelivers them"
        );
        for f in left {
            if let Some(a) = &f.abort {
                a.abort();
            }
            self.in_flight_gauge.dec();
            let out = tasks::retry(format!(
                "the extension is shutting down and task {} did not finish within {:.0} s; please redeliver",
                f.task.options.task_id,
                limit.as_secs_f64()
            ));
            self.outbox.push_now(self.result_frame(&f.task, out));
        }
    }

    /// After a local stop while disconnected: let in-flight tasks finish (their results cannot
    /// be sent; the platform redelivers, and stored documents deduplicate).
    pub(super) async fn drain_disconnected(&self) {
        if self.in_flight() > 0 {
            self.drain(self.opts.local_drain).await;
        }
    }
}
