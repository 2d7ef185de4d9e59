//! The uid that owns the far end of a loopback TCP connection, from the kernel: one
//! `NETLINK_SOCK_DIAG` request (`inet_diag_req_v2`, `SOCK_DIAG_BY_FAMILY`) for the exact 4-tuple,
//! answered with the socket's `inet_diag_msg` and its `idiag_uid`. The messages are encoded and
//! decoded by hand as bytes (no `unsafe`). It does not decide anything: the container-credentials
//! listener compares the uid with its token's.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;

use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, recv, sendto,
    setsockopt, socket, sockopt,
};
use nix::sys::time::TimeVal;

/// `SOCK_DIAG_BY_FAMILY` (linux/sock_diag.h).
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// `NLM_F_REQUEST`.
const NLM_F_REQUEST: u16 = 1;
/// `NLMSG_ERROR`.
const NLMSG_ERROR: u16 = 2;
/// `IPPROTO_TCP`.
const IPPROTO_TCP: u8 = 6;
/// nlmsghdr, then inet_diag_req_v2 (family, protocol, ext, pad, states, 48-byte sockid).
const REQUEST_LEN: usize = 16 + 8 + 48;
/// Offset of `idiag_uid` in the answer: nlmsghdr (16), then family, state, timer, retrans (4),
/// the sockid (48), expires, rqueue, wqueue (12); `idiag_inode` follows it.
const UID_OFFSET: usize = 16 + 4 + 48 + 12;

/// Why the owner of a TCP peer could not be found.
#[derive(Debug, thiserror::Error)]
pub enum PeerTcpError {
    /// The netlink socket could not be opened or used.
    #[error("sock_diag request failed: {0}")]
    Netlink(#[from] nix::Error),
    /// The kernel knows no such socket (the peer closed it, or it is not in our namespace).
    #[error("the kernel has no socket for this connection (errno {0})")]
    NoSocket(i32),
    /// Peer and local address are of different families.
    #[error("peer and local address differ in family")]
    MixedFamilies,
    /// No process holds the peer's socket any more (inode 0): an orphan, or a time-wait
    /// mini-socket whose uid (0) says nothing of who connected.
    #[error("the peer has closed its socket")]
    Closed,
    /// The answer was not an `inet_diag_msg`.
    #[error("unexpected sock_diag answer")]
    BadAnswer,
}

/// The uid owning the socket at `peer` whose far end is `local` (our accepted socket's own
/// address): the process that connected to us.
pub(crate) fn peer_uid(peer: SocketAddr, local: SocketAddr) -> Result<u32, PeerTcpError> {
    let request = encode(peer, local)?;
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkSockDiag,
    )?;
    // The kernel answers at once; the bound keeps a surprise from holding a worker.
    setsockopt(&fd, sockopt::ReceiveTimeout, &TimeVal::new(1, 0))?;
    sendto(
        fd.as_raw_fd(),
        &request,
        &NetlinkAddr::new(0, 0),
        MsgFlags::empty(),
    )?;
    let mut answer = [0u8; 512];
    let n = recv(fd.as_raw_fd(), &mut answer, MsgFlags::empty())?;
    decode(answer.get(..n).ok_or(PeerTcpError::BadAnswer)?)
}

/// The request for the socket whose own address is `peer` and whose remote is `local`.
fn encode(peer: SocketAddr, local: SocketAddr) -> Result<[u8; REQUEST_LEN], PeerTcpError> {
    let family: u8 = match (peer.ip(), local.ip()) {
        (IpAddr::V4(_), IpAddr::V4(_)) => 2,
        (IpAddr::V6(_), IpAddr::V6(_)) => 10,
        _ => return Err(PeerTcpError::MixedFamilies),
    };
    let mut buf = [0u8; REQUEST_LEN];
    buf[0..4].copy_from_slice(&(REQUEST_LEN as u32).to_ne_bytes());
    buf[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    buf[6..8].copy_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    buf[8..12].copy_from_slice(&1u32.to_ne_bytes()); // sequence
    // pid 0: the kernel fills in ours.
    buf[16] = family;
    buf[17] = IPPROTO_TCP;
    buf[20..24].copy_from_slice(&u32::MAX.to_ne_bytes()); // every state
    let id = 24;
    buf[id..id + 2].copy_from_slice(&peer.port().to_be_bytes());
    buf[id + 2..id + 4].copy_from_slice(&local.port().to_be_bytes());
    put_addr(&mut buf[id + 4..id + 20], peer.ip());
    put_addr(&mut buf[id + 20..id + 36], local.ip());
    // interface 0 (any), cookie INET_DIAG_NOCOOKIE: look the socket up by its 4-tuple.
    buf[id + 40..id + 48].copy_from_slice(&[0xff; 8]);
    Ok(buf)
}

fn put_addr(out: &mut [u8], ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => out[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => out.copy_from_slice(&v6.octets()),
    }
}

fn decode(answer: &[u8]) -> Result<u32, PeerTcpError> {
    let word = |at: usize| -> Result<[u8; 4], PeerTcpError> {
        answer
            .get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .ok_or(PeerTcpError::BadAnswer)
    };
    let kind = answer
        .get(4..6)
        .and_then(|b| b.try_into().ok())
        .map(u16::from_ne_bytes)
        .ok_or(PeerTcpError::BadAnswer)?;
    if kind == NLMSG_ERROR {
        return Err(PeerTcpError::NoSocket(
            i32::from_ne_bytes(word(16)?).saturating_neg(),
        ));
    }
    if kind != SOCK_DIAG_BY_FAMILY {
        return Err(PeerTcpError::BadAnswer);
    }
    // SECURITY: a client that closed its socket leaves an orphan or a time-wait mini-socket,
    // which the kernel reports with uid 0; taking that for root would let any uid that closes
    // fast enough pass as root. Only a socket some process still holds (an inode) counts.
    if u32::from_ne_bytes(word(UID_OFFSET + 4)?) == 0 {
        return Err(PeerTcpError::Closed);
    }
    Ok(u32::from_ne_bytes(word(UID_OFFSET)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A loopback connection made by this process: the kernel names our own uid for its far end.
    #[test]
    fn the_kernel_names_the_uid_of_a_loopback_peer() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, peer) = listener.accept().unwrap();
        assert_eq!(peer, client.local_addr().unwrap());
        let uid = peer_uid(peer, accepted.local_addr().unwrap()).unwrap();
        assert_eq!(uid, nix::unistd::geteuid().as_raw());
    }

    /// A client that closed its end before the lookup: its socket is an orphan (FIN_WAIT2 as a
    /// time-wait mini-socket, uid 0 in the kernel's answer), and is refused, not taken for root.
    #[test]
    fn a_peer_that_closed_its_socket_is_not_taken_for_uid_0() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, peer) = listener.accept().unwrap();
        drop(client);
        std::thread::sleep(std::time::Duration::from_millis(100));
        let answer = peer_uid(peer, accepted.local_addr().unwrap());
        assert!(
            matches!(
                answer,
                Err(PeerTcpError::Closed | PeerTcpError::NoSocket(_))
            ),
            "{answer:?}"
        );
    }

    #[test]
    fn a_closed_connection_has_no_owner() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let local = listener.local_addr().unwrap();
        let unused = SocketAddr::from(([127, 0, 0, 1], 1));
        assert!(matches!(
            peer_uid(unused, local),
            Err(PeerTcpError::NoSocket(_))
        ));
    }

    #[test]
    fn mixed_families_are_refused() {
        let v4 = SocketAddr::from(([127, 0, 0, 1], 1));
        let v6 = SocketAddr::from(([0u16, 0, 0, 0, 0, 0, 0, 1], 1));
        assert!(matches!(encode(v4, v6), Err(PeerTcpError::MixedFamilies)));
    }
}
