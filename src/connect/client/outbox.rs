//! Results not yet on the wire ([`Outbox`], bounded in results and bytes) and the writer task
//! that sends them, control frames first.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use futures_util::stream::SplitSink;
use futures_util::SinkExt;
use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit, Semaphore};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_util::sync::CancellationToken;

use super::Ws;
use crate::telemetry::{Metrics, ResultLabels};

/// A result waiting to be sent.
pub(super) struct OutFrame {
    /// Shared bytes: re-queueing after a failed send copies nothing.
    pub(super) text: tungstenite::Utf8Bytes,
    pub(super) labels: Option<ResultLabels>,
    pub(super) _space: Option<OwnedSemaphorePermit>,
    pub(super) _bytes: Option<OwnedSemaphorePermit>,
}

/// Results not yet on the wire, oldest first. Shared by all connections of a channel.
pub(super) struct Outbox {
    pub(super) queue: Mutex<VecDeque<OutFrame>>,
    pub(super) notify: Notify,
    /// Woken when a `pop` leaves the queue empty (the flush before a close waits for it).
    pub(super) emptied: Notify,
    pub(super) space: Arc<Semaphore>,
    /// One permit per byte queued, `result_buffer_bytes` in all.
    pub(super) bytes: Arc<Semaphore>,
    pub(super) bytes_cap: usize,
    pub(super) gauge: prometheus_client::metrics::gauge::Gauge,
}

impl Outbox {
    pub(super) fn len(&self) -> usize {
        self.queue.lock().expect("outbox lock").len()
    }
    /// Permits for one frame of `len` bytes. A result larger than the whole budget takes all of
    /// it (it passes alone), never more.
    pub(super) fn bytes_needed(&self, len: usize) -> u32 {
        len.clamp(1, self.bytes_cap).min(u32::MAX as usize) as u32
    }
    /// Waits for room for a frame of `len` bytes (cancel-safe).
    pub(super) async fn reserve(&self, len: usize) -> (OwnedSemaphorePermit, OwnedSemaphorePermit) {
        let space = self
            .space
            .clone()
            .acquire_owned()
            .await
            .expect("never closed");
        let bytes = self
            .bytes
            .clone()
            .acquire_many_owned(self.bytes_needed(len))
            .await
            .expect("never closed");
        (space, bytes)
    }
    pub(super) fn try_reserve(
        &self,
        len: usize,
    ) -> Option<(OwnedSemaphorePermit, OwnedSemaphorePermit)> {
        let space = self.space.clone().try_acquire_owned().ok()?;
        let bytes = self
            .bytes
            .clone()
            .try_acquire_many_owned(self.bytes_needed(len))
            .ok()?;
        Some((space, bytes))
    }
    pub(super) fn push_reserved(
        &self,
        mut frame: OutFrame,
        (space, bytes): (OwnedSemaphorePermit, OwnedSemaphorePermit),
    ) {
        frame._space = Some(space);
        frame._bytes = Some(bytes);
        self.push_now(frame);
    }
    /// Waits for room (back-pressure), then queues.
    pub(super) async fn push(&self, frame: OutFrame) {
        let permits = self.reserve(frame.text.len()).await;
        self.push_reserved(frame, permits);
    }
    /// Queues without waiting (shutdown answers).
    pub(super) fn push_now(&self, frame: OutFrame) {
        let mut q = self.queue.lock().expect("outbox lock");
        q.push_back(frame);
        self.gauge.set(q.len() as i64);
        drop(q);
        self.notify.notify_one();
    }
    pub(super) fn push_front(&self, frame: OutFrame) {
        let mut q = self.queue.lock().expect("outbox lock");
        q.push_front(frame);
        self.gauge.set(q.len() as i64);
        drop(q);
        self.notify.notify_one();
    }
    /// Waits until the queue is empty (its last frame taken by the writer) or `dead` is cancelled.
    pub(super) async fn emptied(&self, dead: &CancellationToken) {
        loop {
            let emptied = self.emptied.notified();
            tokio::pin!(emptied);
            emptied.as_mut().enable();
            if self.len() == 0 || dead.is_cancelled() {
                return;
            }
            tokio::select! {
                _ = emptied => {}
                _ = dead.cancelled() => return,
            }
        }
    }
    pub(super) async fn pop(&self) -> OutFrame {
        loop {
            {
                let mut q = self.queue.lock().expect("outbox lock");
                if let Some(f) = q.pop_front() {
                    self.gauge.set(q.len() as i64);
                    if q.is_empty() {
                        self.emptied.notify_waiters();
                    }
                    return f;
                }
            }
            self.notify.notified().await;
        }
    }
}

pub(super) async fn writer_loop(
    mut sink: SplitSink<Ws, Message>,
    outbox: Arc<Outbox>,
    mut ctl: mpsc::UnboundedReceiver<Message>,
    dead: CancellationToken,
    metrics: Arc<Metrics>,
) -> Option<SplitSink<Ws, Message>> {
    loop {
        tokio::select! {
            biased;
            _ = dead.cancelled() => return None,
            m = ctl.recv() => {
                let m = m?;
                let closing = matches!(m, Message::Close(_));
                let sent = tokio::select! {
                    r = sink.send(m) => r.is_ok(),
                    _ = dead.cancelled() => false,
                };
                if !sent {
                    dead.cancel();
                    return None;
                }
                if closing {
                    return Some(sink);
                }
            }
            frame = outbox.pop() => {
                let sent = tokio::select! {
                    r = sink.send(Message::Text(frame.text.clone())) => r.is_ok(),
                    _ = dead.cancelled() => false,
                };
                if sent {
                    if let Some(l) = &frame.labels {
                        metrics.results_sent.get_or_create(l).inc();
                    }
                } else {
                    outbox.push_front(frame);
                    dead.cancel();
                    return None;
                }
            }
        }
    }
}
