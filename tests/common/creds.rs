//! The `LoadCredential=` client side, as PID 1 does it: from a process already in the consuming
//! unit's cgroup, bind the abstract address `\0<random>/unit/<unit>/<id>`, connect, shut down the
//! write side, read to EOF.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::ffi::OsStr;
use std::path::Path;

use super::cgroup::TestCgroup;

const LOAD_CREDENTIAL: &str = r#"
import os, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(b"\0" + os.urandom(8).hex().encode() + ("/unit/%s/%s" % (sys.argv[2], sys.argv[3])).encode())
s.connect(sys.argv[1])
s.shutdown(socket.SHUT_WR)
data = b""
while True:
    chunk = s.recv(65536)
    if not chunk:
        break
    data += chunk
sys.stdout.buffer.write(data)
"#;

/// Loads credential `id` for `unit` from the socket at `path`, from a process running as `uid`
/// (None: root, as PID 1) inside `cgroup`. Returns whether the client ran cleanly, and what it
/// read (empty: the agent closed with nothing written).
pub fn load_credential_in(
    cgroup: &TestCgroup,
    uid: Option<u32>,
    path: &Path,
    unit: &str,
    id: &str,
) -> (bool, Vec<u8>) {
    let argv: [&OsStr; 6] = [
        "/usr/bin/python3".as_ref(),
        "-c".as_ref(),
        LOAD_CREDENTIAL.as_ref(),
        path.as_os_str(),
        unit.as_ref(),
        id.as_ref(),
    ];
    let (ok, stdout, stderr) = cgroup.run(uid, &argv);
    if !ok {
        eprintln!("credential client failed: {stderr}");
    }
    (ok, stdout)
}
