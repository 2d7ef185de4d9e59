//! Whether a connection's client has hung up, told to the broker while a `?wait=` read waits
//! (`broker::Hangup`), so the wait ends and the uid's connection slot is freed at once.
//!
//! hyper reads nothing while a response is pending (and with `half_close` a client's shutdown of
//! its write side is no hang-up), so the socket is watched on its own: a copy of its descriptor,
//! made and registered with the runtime only while a read waits, with readiness of its own (the
//! connection's is left alone). The kernel raises `EPOLLHUP` on a Unix stream socket once the
//! peer has closed it altogether (both directions); a half-close or bytes of a next request wake
//! the watch, which finds no hang-up and waits for the next event.

use std::future::Future;
use std::os::fd::AsFd;
use std::pin::Pin;
use std::sync::Arc;

use tokio::io::Interest;
use tokio::net::UnixStream;

use crate::broker::Hangup;

/// The watch of one connection: its socket, shared with the connection's stream (never read
/// from or written to here).
#[derive(Debug)]
pub(super) struct PeerWatch {
    socket: Arc<UnixStream>,
}

impl PeerWatch {
    /// Watches the peer of `socket`.
    pub(super) fn new(socket: Arc<UnixStream>) -> Self {
        PeerWatch { socket }
    }

    /// Resolves once the peer has closed the connection; never when that cannot be watched.
    async fn closed(&self) {
        let Some(watch) = self.register() else {
            return std::future::pending().await;
        };
        loop {
            // Writable readiness, not readable: tokio reports `EPOLLHUP` as write-closed, and
            // keeps a half-close's read-closed for good, so a readable wait would return at once
            // ever after. A next request's bytes still wake this once (epoll reports the whole
            // mask), which finds no hang-up and waits for the next event.
            let Ok(ready) = watch.ready(Interest::WRITABLE).await else {
                return std::future::pending().await;
            };
            if ready.is_write_closed() {
                return;
            }
            // Clears this copy's writable readiness (its own; the connection's is untouched) so
            // the next wait is for a new event. Readiness that came after this one is kept.
            let _ = watch.try_io(Interest::WRITABLE, || {
                Err::<(), _>(std::io::Error::from(std::io::ErrorKind::WouldBlock))
            });
        }
    }

    /// A copy of the socket's descriptor, registered with the runtime for as long as one wait
    /// lasts (so an idle connection costs no second descriptor); `None` when it cannot be made.
    fn register(&self) -> Option<UnixStream> {
        let fd = match self.socket.as_fd().try_clone_to_owned() {
            Ok(fd) => fd,
            Err(err) => {
                tracing::debug!(error = %err, "cannot copy a connection's descriptor; its wait will not see a hang-up");
                return None;
            }
        };
        // The copy shares the connection's open file, which is non-blocking already.
        UnixStream::from_std(std::os::unix::net::UnixStream::from(fd)).ok()
    }
}

impl Hangup for PeerWatch {
    fn hung_up(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(self.closed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;

    /// Whether the watch resolves within `limit`; panics if it was polled more than a few times
    /// meanwhile (a watch that spins on readiness that stays set yields to the runtime's budget
    /// again and again, and is polled thousands of times).
    async fn hangs_up_within(watch: &PeerWatch, limit: Duration) -> bool {
        let mut polls = 0u32;
        let mut gone = watch.hung_up();
        let counted = std::future::poll_fn(|cx| {
            polls += 1;
            gone.as_mut().poll(cx)
        });
        let seen = tokio::time::timeout(limit, counted).await.is_ok();
        assert!(polls <= 5, "the watch was polled {polls} times");
        seen
    }

    #[tokio::test]
    async fn a_closed_peer_is_seen_and_a_half_closed_or_talking_one_is_not() {
        let (mut client, server) = UnixStream::pair().unwrap();
        let server = Arc::new(server);
        let watch = PeerWatch::new(server.clone());
        assert!(!hangs_up_within(&watch, Duration::from_millis(100)).await);
        // Bytes of a next request, then a shutdown of the client's write side: still there.
        client
            .write_all(b"GET /next HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        assert!(!hangs_up_within(&watch, Duration::from_millis(100)).await);
        client.shutdown().await.unwrap();
        assert!(!hangs_up_within(&watch, Duration::from_millis(100)).await);
        // A watch that is waiting sees the close when it happens.
        let waiting =
            tokio::spawn(async move { hangs_up_within(&watch, Duration::from_secs(5)).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(client);
        assert!(waiting.await.unwrap());
        drop(server);
    }

    #[tokio::test]
    async fn a_peer_that_closed_before_the_watch_began_is_seen() {
        let (client, server) = UnixStream::pair().unwrap();
        let server = Arc::new(server);
        let watch = PeerWatch::new(server.clone());
        drop(client);
        assert!(hangs_up_within(&watch, Duration::from_secs(1)).await);
    }
}
