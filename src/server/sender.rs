//! Every request comes from the connector: a connection's identity holds only for bytes written
//! by the process that connected.
//!
//! A socket can be shared: a process may connect, fork a helper that keeps the socket, and exec
//! a program that the rules admit; `SO_PEERCRED` and `/proc/PID` then describe the exec'd
//! program while the helper writes the requests. So the listening socket has `SO_PASSCRED` (an
//! accepted socket inherits it; bytes queued before `accept` carry credentials too) and every
//! read is a `recvmsg` whose `SCM_CREDENTIALS` name the writer: the kernel never returns two
//! writers' bytes from one `recvmsg`. Bytes from any other process (threads report their
//! thread-group id, so threads of the connector are the connector) taint the connection; the
//! server answers its next request `403 peer_changed` and closes it.
//!
//! This module owns the check and the stream wrapper; it does not decide what a tainted request
//! gets (see `server`), and it does not identify the connector (see `peer`).

use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};

use nix::sys::socket::{
    ControlMessageOwned, MsgFlags, UnixCredentials, recvmsg, setsockopt, sockopt,
};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::UnixStream;

use crate::peer::PeerIdentity;

/// Asks the kernel to attach the writer's credentials to every read on `listener` and on the
/// sockets it accepts.
pub fn pass_credentials(listener: &impl AsFd) -> io::Result<()> {
    setsockopt(listener, sockopt::PassCred, &true).map_err(io::Error::from)
}

/// Who may write on a connection: the connecting process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connector {
    /// Its pid (thread-group id), when visible in the agent's pid namespace.
    pid: Option<i32>,
    uid: u32,
    gid: u32,
}

impl Connector {
    /// The connector as `peer` identified it.
    pub fn of(peer: &PeerIdentity) -> Self {
        Connector {
            pid: peer.pid,
            uid: peer.uid,
            gid: peer.gid,
        }
    }

    /// Whether bytes carrying `sender` (None: the kernel attached no credentials) were written by
    /// the connector.
    fn wrote(&self, sender: Option<&UnixCredentials>) -> bool {
        let Some(sender) = sender else {
            // SECURITY: no credentials means the check cannot be made: refuse.
            return false;
        };
        match self.pid {
            Some(pid) => sender.pid() == pid,
            // A peer in a pid namespace the agent cannot see: every writer there shows pid 0, so
            // the ids are all there is to compare.
            None => sender.pid() == 0 && sender.uid() == self.uid && sender.gid() == self.gid,
        }
    }
}

/// Set once any byte on the connection came from a process other than the connector.
#[derive(Debug, Clone, Default)]
pub struct Taint(Arc<AtomicBool>);

impl Taint {
    /// Whether another process wrote on the connection.
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    fn set(&self) {
        self.0.store(true, Ordering::Release);
    }
}

/// A connected stream whose reads record whether they came from the connector.
#[derive(Debug)]
pub struct CheckedStream {
    /// Shared with the connection's hang-up watch (`hangup`), which only looks at the socket.
    stream: Arc<UnixStream>,
    connector: Connector,
    taint: Taint,
    /// Room for one `SCM_CREDENTIALS` message, reused by every read.
    cmsg: Vec<u8>,
}

/// Bytes one read takes at most (a request head fits many times over; more is read next time).
const SCRATCH: usize = 4096;

thread_local! {
    /// Where `recvmsg` writes, one per thread, initialised once: `recvmsg` needs initialised
    /// memory, and zeroing the caller's whole unfilled buffer (8–16 KiB from hyper) on every
    /// read cost more than copying the few hundred bytes a request has. Per thread, not per
    /// connection: a read never awaits between `recvmsg` and the copy, and 4 KiB per open
    /// connection was a quarter of what a waiting connection held (docs/performance.md).
    static SCRATCH_BUF: std::cell::RefCell<Box<[u8]>> =
        std::cell::RefCell::new(vec![0; SCRATCH].into_boxed_slice());
}

impl CheckedStream {
    /// Wraps `stream`, whose listener had [`pass_credentials`], for `connector`.
    pub fn new(stream: UnixStream, connector: Connector) -> (Self, Taint) {
        let taint = Taint::default();
        let checked = CheckedStream {
            stream: Arc::new(stream),
            connector,
            taint: taint.clone(),
            cmsg: nix::cmsg_space!(UnixCredentials),
        };
        (checked, taint)
    }

    /// The socket, for watching it (never for reading or writing it).
    pub(super) fn socket(&self) -> Arc<UnixStream> {
        self.stream.clone()
    }
}

/// One `recvmsg` into `buf`: the byte count and the writer's credentials.
fn recv_with_sender(
    fd: RawFd,
    buf: &mut [u8],
    cmsg: &mut [u8],
) -> io::Result<(usize, Option<UnixCredentials>)> {
    let mut iov = [io::IoSliceMut::new(buf)];
    // No address: the stream is connected, and a `msg_name` buffer would only cost a copy.
    let msg = recvmsg::<()>(fd, &mut iov, Some(cmsg), MsgFlags::MSG_CMSG_CLOEXEC)
        .map_err(io::Error::from)?;
    let bytes = msg.bytes;
    // A truncated control buffer (ENOBUFS here) leaves the writer unknown.
    let sender = msg.cmsgs().ok().and_then(|mut cmsgs| {
        cmsgs.find_map(|c| match c {
            ControlMessageOwned::ScmCredentials(creds) => Some(creds),
            _ => None,
        })
    });
    Ok((bytes, sender))
}

impl AsyncRead for CheckedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let fd = this.stream.as_raw_fd();
        loop {
            ready!(this.stream.poll_read_ready(cx))?;
            let room = buf.remaining().min(SCRATCH);
            let cmsg = &mut this.cmsg;
            let stream = &this.stream;
            let received = SCRATCH_BUF.with_borrow_mut(|scratch| {
                let dst = &mut scratch[..room];
                let received =
                    stream.try_io(Interest::READABLE, || recv_with_sender(fd, dst, cmsg));
                if let Ok((n, _)) = &received {
                    buf.put_slice(&dst[..*n]);
                }
                received
            });
            match received {
                Ok((n, sender)) => {
                    if n > 0 && !this.connector.wrote(sender.as_ref()) {
                        this.taint.set();
                    }
                    if n > 0 && n < room {
                        // As tokio's own `poll_read` does: a short read drained the socket, so
                        // wait for the next readiness event instead of asking again (one
                        // syscall less per request). `try_io` clears readiness when its closure
                        // says WouldBlock; this one says so without a syscall.
                        let _ = this.stream.try_io(Interest::READABLE, || {
                            Err::<(), _>(io::Error::from(io::ErrorKind::WouldBlock))
                        });
                    }
                    return Poll::Ready(Ok(()));
                }
                // Readiness was stale; `try_io` cleared it, so the next poll waits.
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
                Err(err) => return Poll::Ready(Err(err)),
            }
        }
    }
}

// Written through `&UnixStream` (the socket is shared): what tokio's own `poll_write` does, with
// its public `&self` calls.
impl AsyncWrite for CheckedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let stream = &self.get_mut().stream;
        loop {
            ready!(stream.poll_write_ready(cx))?;
            match stream.try_write(buf) {
                // `try_write` cleared the stale readiness: the next poll waits.
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
                written => return Poll::Ready(written),
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let stream = &self.get_mut().stream;
        loop {
            ready!(stream.poll_write_ready(cx))?;
            match stream.try_write_vectored(bufs) {
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
                written => return Poll::Ready(written),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Writes go straight to the socket: nothing is buffered here.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        let fd = self.stream.as_raw_fd();
        Poll::Ready(
            nix::sys::socket::shutdown(fd, nix::sys::socket::Shutdown::Write)
                .map_err(io::Error::from),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use tokio::io::AsyncReadExt;

    fn creds(pid: i32, uid: u32, gid: u32) -> UnixCredentials {
        UnixCredentials::from(nix::libc::ucred { pid, uid, gid })
    }

    #[test]
    fn who_counts_as_the_connector() {
        let visible = Connector {
            pid: Some(42),
            uid: 1000,
            gid: 1000,
        };
        let hidden = Connector {
            pid: None,
            uid: 1000,
            gid: 1000,
        };
        let cases: &[(Connector, Option<UnixCredentials>, bool)] = &[
            (visible, Some(creds(42, 1000, 1000)), true),
            (visible, Some(creds(43, 1000, 1000)), false),
            (visible, None, false),
            // A process in another pid namespace shows pid 0: not the visible connector.
            (visible, Some(creds(0, 1000, 1000)), false),
            (hidden, Some(creds(0, 1000, 1000)), true),
            (hidden, Some(creds(0, 1001, 1000)), false),
            (hidden, Some(creds(0, 1000, 1001)), false),
            (hidden, Some(creds(7, 1000, 1000)), false),
        ];
        for (connector, sender, want) in cases {
            assert_eq!(
                connector.wrote(sender.as_ref()),
                *want,
                "{connector:?} {sender:?}"
            );
        }
    }

    /// Bytes written by this process are the connector's; bytes written by a child through an
    /// inherited copy of the socket taint the connection.
    #[tokio::test]
    async fn a_childs_bytes_taint_the_connection() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        pass_credentials(&listener).unwrap();
        let mut client = std::os::unix::net::UnixStream::connect(&path).unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let peer = crate::peer::identify(&server, crate::peer::AcceptTime::now(), &[]).unwrap();
        let (mut checked, taint) = CheckedStream::new(server, Connector::of(&peer));

        client.write_all(b"mine").unwrap();
        let mut buf = [0u8; 16];
        let n = checked.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"mine");
        assert!(!taint.is_set());

        // A child writes on an inherited copy of the same socket (as a forked helper would).
        let copy = client.try_clone().unwrap();
        nix::fcntl::fcntl(
            &copy,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
        )
        .unwrap();
        let status = std::process::Command::new("/usr/bin/python3")
            .args([
                "-c",
                "import os, sys; os.write(int(sys.argv[1]), b'theirs')",
            ])
            .arg(copy.as_raw_fd().to_string())
            .status()
            .unwrap();
        assert!(status.success());
        let n = checked.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"theirs");
        assert!(taint.is_set());
    }
}
