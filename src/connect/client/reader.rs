//! The reader loop: every frame read, tasks admitted to a slot, queued, or answered at once.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures_util::stream::SplitStream;
use futures_util::StreamExt;
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_util::sync::CancellationToken;

use super::inflight::{InFlight, Waiting};
use super::outbox::OutFrame;
use super::{Channel, End, Ws};
use crate::connect::protocol::{self, Envelope, Incoming, Task, TaskOutput, UnreadableTask};
use crate::connect::tasks;
use crate::sanitize::escape_control;
use crate::telemetry::{ResultLabels, TaskLabels};

/// What the reader holds between frames.
struct Intake {
    /// Tasks read while every slot is busy, oldest first; bounded by count and bytes.
    waiting: Waiting,
    /// An answer given at once (busy `retry`, unreadable task `fail`) waiting for room in the
    /// outbox. Only then does reading pause: the outbox is full only when the platform does
    /// not take our frames, so it would not get our pongs either.
    blocked: Option<OutFrame>,
    /// Busy answers are being given (logged once per episode).
    overflowing: bool,
}

/// What one read from the websocket gives the loop.
enum Read {
    /// The text of a frame to handle.
    Text(tungstenite::Utf8Bytes),
    /// Nothing to handle (a control frame, a skipped binary frame).
    Skip,
    /// The connection ends.
    End(End),
}

impl Channel {
    pub(super) fn result_frame(&self, task: &Task, output: TaskOutput) -> OutFrame {
        let labels = ResultLabels {
            event_type: crate::events::labels::event_type_label_of(&task.input.event_type),
            category: tasks::category_label(task),
            result: output.result.clone(),
        };
        let mut t = task.clone();
        t.output = Some(output);
        OutFrame {
            text: protocol::to_wire(&Envelope::new("task", &t)).into(),
            labels: Some(labels),
            _space: None,
            _bytes: None,
        }
    }

    pub(super) async fn read_loop(
        self: &Arc<Self>,
        stream: &mut SplitStream<Ws>,
        stop: &CancellationToken,
        dead: &CancellationToken,
        ctl_tx: &mpsc::UnboundedSender<Message>,
    ) -> End {
        let mut ping = tokio::time::interval_at(
            Instant::now() + self.opts.ping_interval,
            self.opts.ping_interval,
        );
        let mut awaiting_pong = false;
        // Reading paused since the last ping (no room for an answer): a missing pong proves
        // nothing then.
        let mut paused = false;
        let mut intake = self.new_intake();
        let end = loop {
            self.start_waiting(&mut intake.waiting);
            if intake.blocked.is_some() {
                paused = true;
            }
            let blocked_len = intake.blocked.as_ref().map_or(0, |f| f.text.len());
            tokio::select! {
                biased;
                _ = stop.cancelled() => break End::LocalStop,
                _ = dead.cancelled() => break End::Dropped("sending failed".into()),
                _ = ping.tick() => {
                    if awaiting_pong && !paused {
                        break End::Dropped(format!(
                            "no pong within {} s (CONNECT_PING_INTERVAL)",
                            self.opts.ping_interval.as_secs()
                        ));
                    }
                    let _ = ctl_tx.send(Message::Ping(Vec::new().into()));
                    awaiting_pong = true;
                    paused = false;
                }
                p = self.slots.clone().acquire_owned(), if !intake.waiting.is_empty() => {
                    if let (Ok(p), Some(task)) = (p, intake.waiting.pop()) {
                        self.spawn_task(*task, p);
                    }
                }
                permits = self.outbox.reserve(blocked_len), if intake.blocked.is_some() => {
                    let frame = intake.blocked.take().expect("guarded by the select condition");
                    self.outbox.push_reserved(frame, permits);
                }
                msg = stream.next(), if intake.blocked.is_none() => {
                    let text = match self.read_frame(msg, ctl_tx, &mut awaiting_pong) {
                        Read::Text(text) => text,
                        Read::Skip => continue,
                        Read::End(end) => break end,
                    };
                    if let Some(end) = self.handle_frame(&text, &mut intake) {
                        break end;
                    }
                }
            }
        };
        self.settle_intake(&end, intake);
        end
    }

    /// The reader's holdings at the start of a connection: nothing waiting, nothing blocked.
    fn new_intake(&self) -> Intake {
        Intake {
            waiting: Waiting::new(
                self.opts
                    .max_in_flight
                    .max(self.opts.tuning.waiting_tasks_floor)
                    .max(1),
                self.opts.tuning.waiting_task_bytes,
            ),
            blocked: None,
            overflowing: false,
        }
    }

    /// Starts waiting tasks, oldest first, while a slot is free.
    fn start_waiting(self: &Arc<Self>, waiting: &mut Waiting) {
        while !waiting.is_empty() {
            let Ok(p) = self.slots.clone().try_acquire_owned() else {
                break;
            };
            let task = waiting.pop().expect("not empty");
            self.spawn_task(*task, p);
        }
    }

    /// What a read from the websocket gives: the text of a frame, nothing to handle, or the end
    /// of the connection (a frame too big or not UTF-8 is answered with a close frame first).
    /// Any frame read proves the connection alive (`awaiting_pong` is cleared).
    fn read_frame(
        &self,
        msg: Option<Result<Message, tungstenite::Error>>,
        ctl_tx: &mpsc::UnboundedSender<Message>,
        awaiting_pong: &mut bool,
    ) -> Read {
        match msg {
            None => Read::End(End::Dropped("connection closed".into())),
            Some(Err(tungstenite::Error::Capacity(e))) => {
                tracing::warn!(channel = self.name(), error = %e, limit = self.opts.max_frame_bytes, "frame above CONNECT_MAX_FRAME_BYTES: closing with 1009 (message too big) and reconnecting");
                let _ = ctl_tx.send(Message::Close(Some(CloseFrame {
                    code: CloseCode::Size,
                    reason: "message too big".into(),
                })));
                Read::End(End::Closed(format!(
                    "a frame above CONNECT_MAX_FRAME_BYTES ({e}); closed with 1009"
                )))
            }
            Some(Err(tungstenite::Error::Utf8)) => {
                tracing::warn!(channel = self.name(), "text frame that is not UTF-8: closing with 1007 (invalid data) and reconnecting");
                let _ = ctl_tx.send(Message::Close(Some(CloseFrame {
                    code: CloseCode::Invalid,
                    reason: "invalid UTF-8".into(),
                })));
                Read::End(End::Closed(
                    "a text frame that is not UTF-8; closed with 1007".into(),
                ))
            }
            Some(Err(e)) => Read::End(End::Dropped(e.to_string())),
            Some(Ok(m)) => {
                *awaiting_pong = false;
                match m {
                    Message::Text(t) => Read::Text(t),
                    Message::Binary(b) => match tungstenite::Utf8Bytes::try_from(b.clone()) {
                        Ok(s) => Read::Text(s),
                        Err(_) => {
                            tracing::warn!(
                                channel = self.name(),
                                bytes = b.len(),
                                "binary frame that is not UTF-8 skipped"
                            );
                            Read::Skip
                        }
                    },
                    Message::Close(c) => Read::End(End::Dropped(match c {
                        Some(c) => format!(
                            "the platform closed the connection ({} {})",
                            u16::from(c.code),
                            escape_control(&c.reason)
                        ),
                        None => "the platform closed the connection".into(),
                    })),
                    _ => Read::Skip,
                }
            }
        }
    }

    /// Handles the text of one frame; the end of the connection when the platform asks to shut
    /// down.
    fn handle_frame(self: &Arc<Self>, text: &str, intake: &mut Intake) -> Option<End> {
        match protocol::parse_frame(text) {
            Ok(Incoming::Task(task)) => self.admit_task(task, text.len(), intake),
            Ok(Incoming::UnreadableTask(u)) => {
                let frame = self.unreadable_answer(&u, text);
                intake.blocked = self.answer_now(frame);
            }
            Ok(Incoming::SetupResponse(r)) => {
                // Merge now (arrival order); a storage rebuild runs beside the
                // reader, never in its way.
                let merged = self.shared.live.merge(&r);
                let me = self.clone();
                tokio::spawn(async move { me.shared.live.activate(me.name(), merged).await });
            }
            Ok(Incoming::Shutdown) => {
                tracing::info!(
                    channel = self.name(),
                    in_flight = self.in_flight(),
                    waiting = intake.waiting.len(),
                    "the platform asked to shut down; draining in-flight tasks"
                );
                return Some(End::PlatformShutdown);
            }
            Err(e) => {
                tracing::warn!(
                    channel = self.name(),
                    error = %e,
                    frame = %self.shared.scrubber.excerpt(text),
                    "frame skipped"
                );
            }
        }
        None
    }

    /// A task read: started in a free slot when none waits before it, else queued, else
    /// answered `retry` at once (busy).
    fn admit_task(self: &Arc<Self>, task: Box<Task>, frame_len: usize, intake: &mut Intake) {
        self.count_received(&task.input.event_type, &tasks::category_label(&task));
        if intake.waiting.is_empty() {
            if let Ok(p) = self.slots.clone().try_acquire_owned() {
                self.spawn_task(*task, p);
                return;
            }
        }
        let waiting = &mut intake.waiting;
        let pushed = waiting.push(task, frame_len);
        if pushed.is_ok() {
            intake.overflowing = false;
        }
        if let Err(task) = pushed {
            let out = tasks::retry(format!(
                "the extension is busy: {} tasks running and {} waiting (CONNECT_MAX_IN_FLIGHT); please redeliver task {}",
                self.in_flight(),
                waiting.len(),
                task.options.task_id
            ));
            // Once per episode at WARN (a burst must not flood the log).
            if !intake.overflowing {
                intake.overflowing = true;
                tracing::warn!(
                    channel = self.name(),
                    in_flight = self.in_flight(),
                    waiting = waiting.len(),
                    "every slot busy and the waiting queue full: new tasks are answered `retry` until there is room"
                );
            }
            tracing::debug!(
                channel = self.name(),
                task_id = %escape_control(&task.options.task_id),
                "task answered `retry`: busy"
            );
            let frame = self.result_frame(&task, out);
            intake.blocked = self.answer_now(frame);
        }
    }

    /// The `fail` answer to a task frame that cannot be read (counted and logged here).
    fn unreadable_answer(&self, u: &UnreadableTask, text: &str) -> OutFrame {
        let category = match u.task_category.as_str() {
            c @ ("background" | "interactive" | "scheduled") => c.to_string(),
            _ => "other".into(),
        };
        self.count_received(&u.event_type, &category);
        let reason = self.shared.scrubber.scrub(&u.reason);
        tracing::warn!(
            channel = self.name(),
            task_id = %escape_control(&u.task_id),
            error = %escape_control(&reason),
            frame = %self.shared.scrubber.excerpt(text),
            "task frame skipped: it cannot be read; answered `fail`"
        );
        let out = TaskOutput {
            result: "fail".into(),
            data: None,
            countdown: 0,
            runtime: 0.0,
            message: Some(format!("the task frame could not be read: {reason}")),
        };
        let labels = ResultLabels {
            event_type: crate::events::labels::event_type_label_of(&u.event_type),
            category,
            result: out.result.clone(),
        };
        OutFrame {
            text: u.answer(&out).into(),
            labels: Some(labels),
            _space: None,
            _bytes: None,
        }
    }

    /// After the loop: an answer already decided is kept (the outbox survives reconnects);
    /// tasks that never started are answered `retry` on a shutdown, left to the platform's
    /// redelivery on a lost connection.
    fn settle_intake(&self, end: &End, intake: Intake) {
        let Intake {
            mut waiting,
            blocked,
            ..
        } = intake;
        if let Some(frame) = blocked {
            self.outbox.push_now(frame);
        }
        if !waiting.is_empty() {
            match end {
                // Never started: answered `retry` at once so the platform can hand them on.
                End::PlatformShutdown | End::LocalStop => {
                    tracing::info!(
                        channel = self.name(),
                        tasks = waiting.len(),
                        "shutting down: tasks that never started are answered `retry`"
                    );
                    while let Some(task) = waiting.pop() {
                        let out = tasks::retry(format!(
                            "the extension is shutting down and task {} never started; please redeliver",
                            task.options.task_id
                        ));
                        self.outbox.push_now(self.result_frame(&task, out));
                    }
                }
                // Never started and unanswered: the platform redelivers them after the reconnect.
                End::Dropped(_) | End::Closed(_) => {
                    tracing::warn!(
                        channel = self.name(),
                        tasks = waiting.len(),
                        "connection lost: tasks that never started are left to the platform's redelivery"
                    );
                }
            }
        }
    }

    /// Queues an answer given without running a task, if the outbox has room; else hands it back
    /// (reading then pauses until there is room).
    pub(super) fn answer_now(&self, frame: OutFrame) -> Option<OutFrame> {
        match self.outbox.try_reserve(frame.text.len()) {
            Some(permits) => {
                self.outbox.push_reserved(frame, permits);
                None
            }
            None => Some(frame),
        }
    }

    pub(super) fn count_received(&self, event_type: &str, category: &str) {
        self.shared
            .metrics
            .tasks_received
            .get_or_create(&TaskLabels {
                event_type: crate::events::labels::event_type_label_of(event_type),
                category: category.to_string(),
            })
            .inc();
    }

    pub(super) fn spawn_task(self: &Arc<Self>, task: Task, permit: OwnedSemaphorePermit) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let task = Arc::new(task);
        self.in_flight_gauge.inc();
        tracing::debug!(
            channel = self.name(),
            task_id = %escape_control(&task.options.task_id),
            event_type = %escape_control(&task.input.event_type),
            object_id = %escape_control(&task.input.object_id),
            "task received"
        );
        self.inflight.lock().expect("inflight lock").insert(
            id,
            InFlight {
                task: task.clone(),
                abort: None,
            },
        );
        let defs = self
            .definitions
            .read()
            .expect("definitions lock")
            .clone()
            .unwrap_or_default();
        let me = self.clone();
        // Tracked until its result is queued: `drain` waits for that.
        let handle = self.tasks.spawn(async move {
            let service_id = me.shared.live.service_id();
            let out = tasks::run(&me.shared.tasks, &defs, service_id.as_deref(), &task).await;
            let entry = me.inflight.lock().expect("inflight lock").remove(&id);
            if entry.is_some() {
                me.in_flight_gauge.dec();
                if out.result != "success" && out.result != "skip" {
                    tracing::info!(
                        channel = me.name(),
                        task_id = %escape_control(&task.options.task_id),
                        result = %out.result,
                        message = %escape_control(out.message.as_deref().unwrap_or("")),
                        "task answered"
                    );
                }
                me.outbox.push(me.result_frame(&task, out)).await;
            }
            drop(permit);
        });
        if let Some(f) = self.inflight.lock().expect("inflight lock").get_mut(&id) {
            f.abort = Some(handle.abort_handle());
        }
    }
}
