//! [`FetchLimit`]: `max_concurrent_fetches` per source, with a bounded queue behind it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::error::SourceError;

/// How many fetches may wait per allowed fetch in flight (`max_concurrent_fetches`).
const QUEUE_PER_FETCH: usize = 4;

/// SECURITY: one allowed glob (`aws/prod/*`) lets a caller ask for any number of distinct
/// secrets; without a bound every miss is a backend call, and account-wide throttling hits
/// every host. At most `max` fetches run, at most `max * 4` wait (each at most a given time),
/// and the rest are refused at once.
#[derive(Debug)]
pub struct FetchLimit {
    running: Arc<tokio::sync::Semaphore>,
    waiting: AtomicUsize,
    max_waiting: usize,
}

/// A running fetch's place in its [`FetchLimit`].
#[derive(Debug)]
pub struct FetchPermit(#[allow(dead_code)] tokio::sync::OwnedSemaphorePermit);

impl FetchLimit {
    /// `max` fetches at once.
    pub fn new(max: std::num::NonZeroUsize) -> Self {
        FetchLimit {
            running: Arc::new(tokio::sync::Semaphore::new(max.get())),
            waiting: AtomicUsize::new(0),
            max_waiting: max.get().saturating_mul(QUEUE_PER_FETCH),
        }
    }

    /// A place to fetch, waiting at most `wait` in the queue.
    pub async fn acquire(&self, wait: Duration) -> Result<FetchPermit, SourceError> {
        if let Ok(permit) = self.running.clone().try_acquire_owned() {
            return Ok(FetchPermit(permit));
        }
        let queued = self
            .waiting
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < self.max_waiting).then(|| n.saturating_add(1))
            });
        if queued.is_err() {
            return Err(SourceError::Busy);
        }
        let permit = tokio::time::timeout(wait, self.running.clone().acquire_owned()).await;
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        match permit {
            Ok(Ok(permit)) => Ok(FetchPermit(permit)),
            _ => Err(SourceError::Busy),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::num::NonZeroUsize;

    #[tokio::test(start_paused = true)]
    async fn at_most_max_run_a_bounded_queue_waits_and_the_rest_are_busy() {
        let limit = Arc::new(FetchLimit::new(NonZeroUsize::new(2).unwrap()));
        let wait = Duration::from_secs(5);
        let a = limit.acquire(wait).await.unwrap();
        let _b = limit.acquire(wait).await.unwrap();
        // 8 may queue (2 x 4); the 9th is refused at once.
        let mut queued = Vec::new();
        for _ in 0..8 {
            let limit = limit.clone();
            queued.push(tokio::spawn(async move { limit.acquire(wait).await }));
        }
        tokio::task::yield_now().await;
        assert!(matches!(limit.acquire(wait).await, Err(SourceError::Busy)));
        // One place frees up: one waiter gets it, the others time out as busy.
        drop(a);
        // Permits are held (kept in `granted`) so a waiter that got one does not pass it on.
        let mut granted = Vec::new();
        for task in queued {
            if let Ok(permit) = task.await.unwrap() {
                granted.push(permit);
            }
        }
        assert_eq!(granted.len(), 1);
        assert!(SourceError::Busy.is_transient());
    }
}
