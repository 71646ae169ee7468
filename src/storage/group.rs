//! Group commit, shared by the backends that write over the network (`driver`, `postgres`): each
//! save becomes a [`Job`] on a queue; one batcher task coalesces the queued jobs into a group (up
//! to `batch_max` documents, or whatever arrived within `wait` of the first), hands the group to
//! the backend's [`GroupWrite`] with at most `in_flight` groups outstanding, and answers every
//! caller with the outcomes of its own documents, in order.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::error::StorageError;
use super::store::SaveOutcome;

/// One result per document, in order.
pub type Results = Vec<Result<SaveOutcome, StorageError>>;

/// What one save hands the batcher: its documents (in the backend's stored form) and where to
/// answer.
pub struct Job<T> {
    pub items: Vec<T>,
    pub reply: oneshot::Sender<Results>,
}

/// The backend's write of one group: one result per item, in order.
#[async_trait]
pub trait GroupWrite<T: Sync>: Send + Sync + 'static {
    async fn write(&self, items: &[&T]) -> Results;
}

/// The batcher task: runs until the queue's senders are gone (or `in_flight` is closed).
pub async fn batcher<T, W>(
    writer: Arc<W>,
    mut rx: mpsc::Receiver<Job<T>>,
    batch_max: usize,
    wait: Duration,
    in_flight: Arc<Semaphore>,
) where
    T: Send + Sync + 'static,
    W: GroupWrite<T>,
{
    use mpsc::error::TryRecvError;
    loop {
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = rx.recv().await else {
            return;
        };
        let mut count = first.items.len();
        let mut jobs = vec![first];
        let deadline = tokio::time::Instant::now() + wait;
        while count < batch_max {
            let next = match rx.try_recv() {
                Ok(job) => Some(job),
                Err(TryRecvError::Disconnected) => None,
                Err(TryRecvError::Empty) if wait.is_zero() => None,
                Err(TryRecvError::Empty) => tokio::time::timeout_at(deadline, rx.recv())
                    .await
                    .ok()
                    .flatten(),
            };
            match next {
                Some(job) => {
                    count += job.items.len();
                    jobs.push(job);
                }
                None => break,
            }
        }
        let writer = writer.clone();
        tokio::spawn(async move {
            write_jobs(&*writer, jobs).await;
            drop(permit);
        });
    }
}

/// Writes the jobs as one group and answers each with its share of the results.
pub async fn write_jobs<T: Sync, W: GroupWrite<T> + ?Sized>(writer: &W, jobs: Vec<Job<T>>) {
    let items: Vec<&T> = jobs.iter().flat_map(|j| j.items.iter()).collect();
    let results = writer.write(&items).await;
    drop(items);
    let mut results = results.into_iter();
    for job in jobs {
        let mine: Results = results.by_ref().take(job.items.len()).collect();
        let _ = job.reply.send(mine);
    }
}

/// One save through the queue `tx` (`None` once the backend is closing): the outcome of each of
/// `items`; a closed queue or a writer that stopped answering is a retriable error.
pub async fn submit<T>(
    tx: Option<mpsc::Sender<Job<T>>>,
    items: Vec<T>,
    backend: &'static str,
) -> Results {
    let n = items.len();
    let closed =
        || StorageError::unavailable(backend, format!("the {backend} storage is shutting down"));
    let Some(tx) = tx else {
        return vec![Err(closed()); n];
    };
    let (reply, rx) = oneshot::channel();
    if tx.send(Job { items, reply }).await.is_err() {
        return vec![Err(closed()); n];
    }
    match rx.await {
        Ok(r) if r.len() == n => r,
        Ok(_) => vec![
            Err(StorageError::internal(
                backend,
                "wrong number of results from the group writer"
            ));
            n
        ],
        Err(_) => vec![
            Err(StorageError::unavailable(
                backend,
                "the group writer stopped before answering"
            ));
            n
        ],
    }
}
