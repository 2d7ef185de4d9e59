//! journald's native protocol: one datagram per entry to `/run/systemd/journal/socket`, each
//! field `NAME=value\n` (or, for a value with a newline, `NAME\n` + its length as a little-endian
//! u64 + the value + `\n`), as `sd_journal_sendv(3)` writes it.
//!
//! It owns the question "is stderr the journal?" ([`stderr_is_journal`]: systemd names stderr's
//! device and inode in `JOURNAL_STREAM`, journald.conf(5)) and the encoding and sending of one
//! entry. It does not decide what is logged: [`crate::logging`] sends log events here with their
//! `PRIORITY`, [`crate::audit`] sends each audit line as its own entry with its own fields.
//! Entries larger than one datagram (journald passes those through a memfd) are not sent here:
//! the caller writes them to stderr instead, which under systemd still reaches the journal.

use std::os::fd::AsFd;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

/// journald's socket for native entries.
const SOCKET: &str = "/run/systemd/journal/socket";

/// The identifier every entry carries (as `SyslogIdentifier=` does for stderr lines).
pub(crate) const IDENTIFIER: &str = "credagent";

/// Set once at start-up when logs go to journald natively; the audit sink `"-"` then does too.
static ACTIVE: AtomicBool = AtomicBool::new(false);

/// Whether log and audit entries go to journald natively (set by [`crate::logging::init`]).
pub(crate) fn active() -> bool {
    ACTIVE.load(Ordering::Relaxed)
}

/// Records that entries go to journald natively.
pub(crate) fn set_active() {
    ACTIVE.store(true, Ordering::Relaxed);
}

/// Whether this process's stderr is the journal: `JOURNAL_STREAM` (`DEVICE:INODE`, set by
/// systemd for a unit whose stderr is the journal) names the file stderr is. A child that
/// inherited the variable but not the stream (stderr redirected) gets `false`.
pub(crate) fn stderr_is_journal() -> bool {
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = value.to_str().and_then(parse_stream) else {
        return false;
    };
    match nix::sys::stat::fstat(std::io::stderr().as_fd()) {
        Ok(stat) => stat.st_dev == dev && stat.st_ino == ino,
        Err(_) => false,
    }
}

/// `DEVICE:INODE` as systemd writes `JOURNAL_STREAM`.
fn parse_stream(value: &str) -> Option<(u64, u64)> {
    let (dev, ino) = value.split_once(':')?;
    Some((dev.parse().ok()?, ino.parse().ok()?))
}

/// A journald priority (syslog levels, sd-daemon(3)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Priority {
    /// 3: errors.
    Err = 3,
    /// 4: warnings.
    Warning = 4,
    /// 5: normal but significant (a denied request).
    Notice = 5,
    /// 6: informational.
    Info = 6,
    /// 7: debug.
    Debug = 7,
}

impl Priority {
    fn digit(self) -> &'static [u8] {
        match self {
            Priority::Err => b"3",
            Priority::Warning => b"4",
            Priority::Notice => b"5",
            Priority::Info => b"6",
            Priority::Debug => b"7",
        }
    }
}

/// One entry being built: fields appended in order, sent with [`Journal::send`].
#[derive(Debug, Default)]
pub(crate) struct Entry {
    buf: Vec<u8>,
}

impl Entry {
    /// A new entry with `PRIORITY` and `SYSLOG_IDENTIFIER` set.
    pub(crate) fn new(priority: Priority) -> Self {
        let mut entry = Entry {
            buf: Vec::with_capacity(256),
        };
        entry.field("PRIORITY", priority.digit());
        entry.field("SYSLOG_IDENTIFIER", IDENTIFIER.as_bytes());
        entry
    }

    /// Appends one field. `name` must be a valid journal field name ([`valid_name`]); an invalid
    /// one is left out rather than sent, as journald would drop the whole entry.
    pub(crate) fn field(&mut self, name: &str, value: &[u8]) {
        if !valid_name(name) {
            return;
        }
        self.buf.extend_from_slice(name.as_bytes());
        if value.contains(&b'\n') {
            self.buf.push(b'\n');
            self.buf
                .extend_from_slice(&(value.len() as u64).to_le_bytes());
        } else {
            self.buf.push(b'=');
        }
        self.buf.extend_from_slice(value);
        self.buf.push(b'\n');
    }

    /// The encoded datagram.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.buf
    }
}

/// A journal field name: 1–64 characters of `A-Z`, `0-9` and `_`, not starting with `_` (those
/// are trusted fields journald sets itself) or a digit.
pub(crate) fn valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 64
        && bytes
            .iter()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || *b == b'_')
        && !bytes[0].is_ascii_digit()
        && bytes[0] != b'_'
}

/// A socket to journald.
#[derive(Debug)]
pub(crate) struct Journal {
    socket: UnixDatagram,
}

impl Journal {
    /// An unbound datagram socket connected to journald's native socket.
    pub(crate) fn connect() -> std::io::Result<Self> {
        Self::connect_to(Path::new(SOCKET))
    }

    fn connect_to(path: &Path) -> std::io::Result<Self> {
        let socket = UnixDatagram::unbound()?;
        socket.connect(path)?;
        Ok(Journal { socket })
    }

    /// Sends one entry. An error (journald gone, entry too large) is the caller's to handle:
    /// it writes the line to stderr instead.
    pub(crate) fn send(&self, entry: &Entry) -> std::io::Result<()> {
        self.socket.send(entry.bytes()).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_encoded_as_sd_journal_sendv_writes_them() {
        let mut entry = Entry::new(Priority::Err);
        entry.field("MESSAGE", b"source failed");
        entry.field("MULTI", b"a\nb");
        let mut want =
            b"PRIORITY=3\nSYSLOG_IDENTIFIER=credagent\nMESSAGE=source failed\nMULTI\n".to_vec();
        want.extend_from_slice(&3u64.to_le_bytes());
        want.extend_from_slice(b"a\nb\n");
        assert_eq!(entry.bytes(), want.as_slice());
    }

    #[test]
    fn invalid_field_names_are_left_out() {
        for name in ["", "_PID", "lower", "1ABC", "WITH-DASH", &"A".repeat(65)] {
            assert!(!valid_name(name), "{name:?}");
            let mut entry = Entry::default();
            entry.field(name, b"x");
            assert!(entry.bytes().is_empty(), "{name:?}");
        }
        for name in ["MESSAGE", "CREDAGENT_AUDIT", "A1_B", &"A".repeat(64)] {
            assert!(valid_name(name), "{name:?}");
        }
    }

    #[test]
    fn journal_stream_is_parsed_as_device_and_inode() {
        assert_eq!(parse_stream("8:12345"), Some((8, 12345)));
        for bad in ["", "8", ":1", "8:", "a:1", "8:1:2", "-1:2"] {
            assert_eq!(parse_stream(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn an_entry_reaches_a_datagram_socket_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("socket");
        let server = UnixDatagram::bind(&path).unwrap();
        let journal = Journal::connect_to(&path).unwrap();
        let mut entry = Entry::new(Priority::Info);
        entry.field("MESSAGE", b"hello");
        journal.send(&entry).unwrap();
        let mut buf = [0u8; 512];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], entry.bytes());
    }
}
