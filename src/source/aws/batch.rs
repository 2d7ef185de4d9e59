//! The batcher of the AWS sources' plain reads: distinct misses of one source that arrive close
//! together are sent as one backend call (`BatchGetSecretValue`, `GetParameters`), at most
//! [`BatchCall::MAX`] ids per call, and each waiter gets its own id's result. A batch goes when
//! it is full, when no id joined it for the source's window (`batch_window_ms`, default
//! [`super::config::DEFAULT_BATCH_WINDOW_MS`]), or [`MAX_WAIT_WINDOWS`] windows after it opened,
//! whichever comes first. It owns the window, the split into calls and the pause after a denied
//! batch call.
//!
//! It does not own admission: every waiter has taken its uid's share and its fetch slot
//! (`SourceEntry::fetch_limited`) before it joins, so a batch never holds more ids than the
//! callers had slots for, and single-flight per id stays the cache's. It does not own the
//! backend calls either: each source implements [`BatchCall`]. One batcher belongs to one built
//! source, so a batch never mixes config generations (a reload builds new sources).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::secure_mem::SecretBytes;
use crate::source::error::SourceError;
use crate::source::secret::Secret;

/// The default window, for the tests.
#[cfg(test)]
const BATCH_WINDOW: Duration = Duration::from_millis(super::config::DEFAULT_BATCH_WINDOW_MS);

/// A batch goes at the latest this many windows after its first id arrived, however many keep
/// joining.
pub(crate) const MAX_WAIT_WINDOWS: u32 = 5;

/// After the backend denied a batch call (no `secretsmanager:BatchGetSecretValue` or
/// `ssm:GetParameters`, or a denial that covers the whole call), reads go one by one for this
/// long before a batch call is tried again.
pub(crate) const BATCH_PAUSE: Duration = Duration::from_secs(600);

/// One id's answer from the batcher.
#[derive(Debug)]
pub(crate) enum Batched {
    /// The batch call answered for this id: its value or its own error.
    Done(Result<Secret, SourceError>),
    /// Read this id alone, as an unbatched read would: batching is paused after a denied batch
    /// call, this one was denied, or its reply did not name the id.
    Alone,
}

/// A batch call's answer per id, in the order asked (`None`: the reply does not name it).
pub(crate) type Answers = Vec<Option<Result<Secret, SourceError>>>;

/// A source's batch call.
pub(crate) trait BatchCall: Send + Sync + 'static {
    /// Most ids one call takes.
    const MAX: usize;
    /// The backend operation, for logs.
    const OPERATION: &'static str;
    /// Fetches `ids` (distinct, at most [`BatchCall::MAX`]) in one call: an answer per id in
    /// the same order (`None` when the reply does not name it), or the whole call's error.
    fn call(&self, ids: &[String]) -> impl Future<Output = Result<Answers, SourceError>> + Send;
}

type Waiter = oneshot::Sender<Batched>;

/// The batch being collected.
struct Open {
    serial: u64,
    /// When the last id joined.
    joined: Instant,
    /// Waiters by id (several readers of one id share its answer).
    waiters: HashMap<String, Vec<Waiter>>,
}

struct Inner<C> {
    call: C,
    /// `batch_window_ms`; zero: every read goes alone.
    window: Duration,
    open: Mutex<Option<Open>>,
    next_serial: AtomicU64,
    /// Until when reads go alone after a denied batch call.
    paused_until: Mutex<Option<Instant>>,
}

/// Collects one source's concurrent plain reads into batch calls.
pub(crate) struct Batcher<C> {
    inner: Arc<Inner<C>>,
}

impl<C> std::fmt::Debug for Batcher<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher").finish_non_exhaustive()
    }
}

impl<C: BatchCall> Batcher<C> {
    /// A batcher sending its batches through `call` after `window` (zero: every read goes
    /// alone).
    pub(crate) fn new(call: C, window: Duration) -> Self {
        Batcher {
            inner: Arc::new(Inner {
                call,
                window,
                open: Mutex::new(None),
                next_serial: AtomicU64::new(0),
                paused_until: Mutex::new(None),
            }),
        }
    }

    /// Whether reads go alone now (a batch call was denied less than [`BATCH_PAUSE`] ago).
    fn paused(&self) -> bool {
        if !self.enabled() {
            return true;
        }
        let mut until = lock(&self.inner.paused_until);
        match *until {
            Some(t) if Instant::now() < t => true,
            Some(_) => {
                *until = None;
                false
            }
            None => false,
        }
    }

    /// Whether reads are batched at all (`batch_window_ms` above 0).
    pub(crate) fn enabled(&self) -> bool {
        !self.inner.window.is_zero()
    }

    /// `ids`' answers from batch calls sent at once (no window), at most [`BatchCall::MAX`]
    /// ids per call, one call after the other: `[prefetch]`, whose ids are known together.
    pub(crate) async fn get_now(&self, ids: &[String]) -> Vec<Batched> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(C::MAX) {
            if self.paused() {
                out.extend(chunk.iter().map(|_| Batched::Alone));
            } else {
                out.extend(self.inner.answer(chunk).await);
            }
        }
        out
    }

    /// `id`'s answer from the batch it joins (the open one, or a new one it opens).
    pub(crate) async fn get(&self, id: &str) -> Batched {
        if self.paused() {
            return Batched::Alone;
        }
        let (tx, rx) = oneshot::channel();
        let full = {
            let mut open = lock(&self.inner.open);
            let batch = match open.as_mut() {
                Some(batch) => batch,
                None => {
                    let serial = self.inner.next_serial.fetch_add(1, Ordering::Relaxed);
                    let inner = self.inner.clone();
                    tokio::spawn(async move { inner.send_when_due(serial).await });
                    open.insert(Open {
                        serial,
                        joined: Instant::now(),
                        waiters: HashMap::new(),
                    })
                }
            };
            batch.joined = Instant::now();
            batch.waiters.entry(id.to_owned()).or_default().push(tx);
            // A full batch goes at once; the next id opens a new one.
            if batch.waiters.len() >= C::MAX {
                open.take()
            } else {
                None
            }
        };
        if let Some(batch) = full {
            let inner = self.inner.clone();
            tokio::spawn(async move { inner.send(batch).await });
        }
        // A batch task that ended without answering (it cannot, short of a panic) leaves the
        // read to go alone rather than fail.
        rx.await.unwrap_or(Batched::Alone)
    }
}

impl<C: BatchCall> Inner<C> {
    /// Sends batch `serial` once no id joined it for the window or [`MAX_WAIT_WINDOWS`]
    /// windows after it opened, unless it went already (full).
    async fn send_when_due(self: Arc<Self>, serial: u64) {
        let opened = Instant::now();
        let max_wait = self.window.saturating_mul(MAX_WAIT_WINDOWS);
        let latest = opened.checked_add(max_wait).unwrap_or(opened);
        loop {
            let due = match lock(&self.open).as_ref() {
                Some(batch) if batch.serial == serial => {
                    let idle = batch.joined.checked_add(self.window).unwrap_or(latest);
                    idle.min(latest)
                }
                _ => return,
            };
            if Instant::now() >= due {
                break;
            }
            tokio::time::sleep_until(due).await;
        }
        let taken = {
            let mut open = lock(&self.open);
            match open.as_ref() {
                Some(batch) if batch.serial == serial => open.take(),
                _ => None,
            }
        };
        if let Some(batch) = taken {
            self.send(batch).await;
        }
    }

    /// One call for the batch; every waiter gets its id's answer. A batch of one id goes alone:
    /// the single read has the larger quota (Secrets Manager: 10,000/s against 100/s).
    async fn send(&self, batch: Open) {
        let (ids, waiters): (Vec<String>, Vec<Vec<Waiter>>) = batch.waiters.into_iter().unzip();
        if ids.len() == 1 {
            waiters.into_iter().for_each(alone);
            return;
        }
        for (waiters, answer) in waiters.into_iter().zip(self.answer(&ids).await) {
            deliver(waiters, answer);
        }
    }

    /// One call's answer for each of `ids` (at most [`BatchCall::MAX`]).
    async fn answer(&self, ids: &[String]) -> Vec<Batched> {
        match self.call.call(ids).await {
            Ok(answers) => {
                let mut answers = answers.into_iter();
                ids.iter()
                    .map(|_| {
                        answers
                            .next()
                            .flatten()
                            .map_or(Batched::Alone, Batched::Done)
                    })
                    .collect()
            }
            Err(SourceError::Denied { detail }) => {
                tracing::warn!(
                    operation = C::OPERATION,
                    %detail,
                    "batch call denied; reading one by one for {} s",
                    BATCH_PAUSE.as_secs()
                );
                *lock(&self.paused_until) = Instant::now().checked_add(BATCH_PAUSE);
                ids.iter().map(|_| Batched::Alone).collect()
            }
            Err(err) => ids
                .iter()
                .map(|_| Batched::Done(Err(err.clone())))
                .collect(),
        }
    }
}

/// The first reader of an id gets its answer, any other a copy in secure memory of its own (or
/// the copy's failure).
fn deliver(waiters: Vec<Waiter>, answer: Batched) {
    let mut waiters = waiters.into_iter();
    let Some(first) = waiters.next() else {
        return;
    };
    for tx in waiters {
        let copy = match &answer {
            Batched::Done(Ok(secret)) => Batched::Done(
                SecretBytes::from_slice(secret.value.as_slice())
                    .map(|value| Secret::new(value, secret.version.clone()))
                    .map_err(SourceError::from),
            ),
            Batched::Done(Err(err)) => Batched::Done(Err(err.clone())),
            Batched::Alone => Batched::Alone,
        };
        let _ = tx.send(copy);
    }
    let _ = first.send(answer);
}

fn alone(waiters: Vec<Waiter>) {
    for tx in waiters {
        let _ = tx.send(Batched::Alone);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Answers each id with its own name as the value, "missing" ids with NotFound, "unnamed"
    /// ids with no answer; counts its calls and the ids in each; denies every call when `deny`.
    #[derive(Default)]
    struct Fake<const MAX: usize = 3> {
        calls: Mutex<Vec<usize>>,
        deny: bool,
    }

    impl<const M: usize> BatchCall for Arc<Fake<M>> {
        const MAX: usize = M;
        const OPERATION: &'static str = "FakeBatch";
        async fn call(&self, ids: &[String]) -> Result<Answers, SourceError> {
            self.calls.lock().unwrap().push(ids.len());
            if self.deny {
                return Err(SourceError::Denied {
                    detail: "no batch".into(),
                });
            }
            Ok(ids
                .iter()
                .map(|id| match id.as_str() {
                    "missing" => Some(Err(SourceError::NotFound)),
                    "unnamed" => None,
                    _ => Some(Ok(Secret::new(
                        SecretBytes::from_slice(id.as_bytes()).unwrap(),
                        None,
                    ))),
                })
                .collect())
        }
    }

    fn value(answer: &Batched) -> Option<&[u8]> {
        match answer {
            Batched::Done(Ok(secret)) => Some(secret.value.as_slice()),
            _ => None,
        }
    }

    async fn read_all(batcher: &Arc<Batcher<Arc<Fake>>>, ids: &[&str]) -> Vec<Batched> {
        let tasks: Vec<_> = ids
            .iter()
            .map(|id| {
                let (batcher, id) = (batcher.clone(), id.to_string());
                tokio::spawn(async move { batcher.get(&id).await })
            })
            .collect();
        let mut out = Vec::new();
        for task in tasks {
            out.push(task.await.unwrap());
        }
        out
    }

    #[tokio::test(start_paused = true)]
    async fn reads_within_the_window_share_calls_of_at_most_max_ids_and_keep_their_own_answers() {
        let fake = Arc::new(Fake::<3>::default());
        let batcher = Arc::new(Batcher::new(fake.clone(), BATCH_WINDOW));
        let ids = ["a", "a", "b", "missing", "c", "unnamed", "d"];
        let answers = read_all(&batcher, &ids).await;
        // Six distinct ids, three per call.
        assert_eq!(*fake.calls.lock().unwrap(), vec![3, 3]);
        // Both readers of "a" got its value.
        assert_eq!(value(&answers[0]), Some(&b"a"[..]));
        assert_eq!(value(&answers[1]), Some(&b"a"[..]));
        assert_eq!(value(&answers[2]), Some(&b"b"[..]));
        assert!(matches!(
            answers[3],
            Batched::Done(Err(SourceError::NotFound))
        ));
        assert_eq!(value(&answers[4]), Some(&b"c"[..]));
        assert!(matches!(answers[5], Batched::Alone));
        assert_eq!(value(&answers[6]), Some(&b"d"[..]));
    }

    #[tokio::test(start_paused = true)]
    async fn a_read_after_the_window_opens_a_new_batch_and_a_lone_read_goes_alone() {
        let fake = Arc::new(Fake::<3>::default());
        let batcher = Arc::new(Batcher::new(fake.clone(), BATCH_WINDOW));
        read_all(&batcher, &["a", "b"]).await;
        tokio::time::advance(BATCH_WINDOW).await;
        read_all(&batcher, &["c", "d"]).await;
        assert_eq!(*fake.calls.lock().unwrap(), vec![2, 2]);
        let lone = read_all(&batcher, &["e"]).await;
        assert!(matches!(lone[0], Batched::Alone));
        assert_eq!(fake.calls.lock().unwrap().len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn an_id_joining_within_the_window_keeps_the_batch_open_up_to_the_longest_wait() {
        let fake = Arc::new(Fake::<3>::default());
        let batcher = Arc::new(Batcher::new(fake.clone(), BATCH_WINDOW));
        let step = BATCH_WINDOW.mul_f64(0.8);
        let reader = |id: &'static str| {
            let batcher = batcher.clone();
            tokio::spawn(async move { batcher.get(id).await })
        };
        // "b" joins 4 ms after "a": one call.
        let a = reader("a");
        tokio::time::advance(step).await;
        let b = reader("b");
        assert!(value(&a.await.unwrap()).is_some() && value(&b.await.unwrap()).is_some());
        assert_eq!(*fake.calls.lock().unwrap(), vec![2]);
    }

    #[tokio::test(start_paused = true)]
    async fn ids_joining_every_4_ms_keep_a_batch_open_no_longer_than_the_longest_wait() {
        let fake = Arc::new(Fake::<10>::default());
        let batcher = Arc::new(Batcher::new(fake.clone(), BATCH_WINDOW));
        let step = BATCH_WINDOW.mul_f64(0.8);
        let mut tasks = Vec::new();
        // 0, 4, ... 24 ms: seven ids join; the eighth, at 28 ms, comes after the batch went.
        for id in ["a", "b", "c", "d", "e", "f", "g", "h"] {
            let batcher = batcher.clone();
            tasks.push(tokio::spawn(async move { batcher.get(id).await }));
            tokio::time::advance(step).await;
        }
        let mut answers = Vec::new();
        for task in tasks {
            answers.push(task.await.unwrap());
        }
        assert_eq!(*fake.calls.lock().unwrap(), vec![7]);
        assert!(matches!(answers[7], Batched::Alone));
    }

    #[tokio::test(start_paused = true)]
    async fn ids_known_together_go_at_once_in_calls_of_at_most_max() {
        let fake = Arc::new(Fake::<3>::default());
        let batcher = Batcher::new(fake.clone(), BATCH_WINDOW);
        let ids: Vec<String> = ["a", "b", "c", "missing", "e"].map(String::from).into();
        let answers = batcher.get_now(&ids).await;
        assert_eq!(*fake.calls.lock().unwrap(), vec![3, 2]);
        assert_eq!(value(&answers[4]), Some(&b"e"[..]));
        assert!(matches!(
            answers[3],
            Batched::Done(Err(SourceError::NotFound))
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_denied_batch_call_sends_its_reads_alone_and_pauses_batching() {
        let fake = Arc::new(Fake::<3> {
            deny: true,
            ..Fake::default()
        });
        let batcher = Arc::new(Batcher::new(fake.clone(), BATCH_WINDOW));
        let answers = read_all(&batcher, &["a", "b"]).await;
        assert!(answers.iter().all(|a| matches!(a, Batched::Alone)));
        // Paused: no batch call at all.
        assert!(matches!(batcher.get("c").await, Batched::Alone));
        assert_eq!(*fake.calls.lock().unwrap(), vec![2]);
        // After the pause, batching is tried again.
        tokio::time::advance(BATCH_PAUSE).await;
        read_all(&batcher, &["d", "e"]).await;
        assert_eq!(*fake.calls.lock().unwrap(), vec![2, 2]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_batcher_turned_off_sends_every_read_alone() {
        let fake = Arc::new(Fake::<3>::default());
        let batcher = Arc::new(Batcher::new(fake.clone(), Duration::ZERO));
        let answers = read_all(&batcher, &["a", "b", "c"]).await;
        assert!(answers.iter().all(|a| matches!(a, Batched::Alone)));
        let ids: Vec<String> = ["a", "b"].map(String::from).into();
        assert!(
            batcher
                .get_now(&ids)
                .await
                .iter()
                .all(|a| matches!(a, Batched::Alone))
        );
        assert!(fake.calls.lock().unwrap().is_empty());
    }
}
