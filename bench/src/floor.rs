//! The bare floor: the least a credential server over a Unix socket must do, and nothing more.
//! A hyper HTTP/1.1 server (same runtime flavour and hyper version as the agent) that reads
//! SO_PEERCRED once per connection and answers each request with a fixed 64-byte body after one
//! HashMap lookup. It has no ACL, no audit, no cache policy, no secure memory: the agent's cost
//! above this floor is the price of those.
//!
//! It runs as its own process (`credagent-bench floor --socket PATH`) so its CPU time can be read
//! from `/proc/PID/stat` exactly like the agent's.

use std::collections::HashMap;
use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use tokio::net::UnixListener;

use crate::error::BenchError;

/// The path both servers are asked for in the throughput runs.
pub const SECRET_PATH: &str = "/v1/secrets/files/bench";
/// The value both servers return: 64 bytes.
pub const BODY: &[u8; 64] = b"floor-0123456789abcdef0123456789abcdef0123456789abcdef0123456789";

/// Runs the floor server on `socket` until killed.
pub fn run(socket: &Path) -> Result<(), BenchError> {
    // Same runtime as the agent's `serve`: multi-threaded, one worker per allowed CPU.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(BenchError::io("start the floor's runtime"))?;
    runtime.block_on(serve(socket))
}

async fn serve(socket: &Path) -> Result<(), BenchError> {
    let _ = std::fs::remove_file(socket);
    let listener =
        UnixListener::bind(socket).map_err(BenchError::io(format!("bind {}", socket.display())))?;
    let mut table: HashMap<&'static str, Bytes> = HashMap::new();
    table.insert(SECRET_PATH, Bytes::from_static(BODY));
    let table = Arc::new(table);
    let allowed_uid = nix::unistd::geteuid().as_raw();
    loop {
        let (stream, _) = listener
            .accept()
            .await
            .map_err(BenchError::io("floor accept"))?;
        let table = table.clone();
        tokio::spawn(async move {
            // One SO_PEERCRED read per connection, as any peer-checking server must.
            let Ok(cred) = getsockopt(&stream, PeerCredentials) else {
                return;
            };
            let allowed = cred.uid() == allowed_uid;
            let service = service_fn(move |req: Request<Incoming>| {
                let response = match table.get(req.uri().path()) {
                    Some(body) if allowed => reply(StatusCode::OK, body.clone()),
                    Some(_) => reply(StatusCode::FORBIDDEN, Bytes::new()),
                    None => reply(StatusCode::NOT_FOUND, Bytes::new()),
                };
                async move { Ok::<_, Infallible>(response) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn reply(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Starts the floor server (this executable, `floor --socket`) on `core`, with its socket in
/// `dir`, and waits until it answers.
pub async fn start(
    dir: &Path,
    core: Option<usize>,
) -> Result<(crate::procfs::ChildGuard, std::path::PathBuf), BenchError> {
    let socket = dir.join("floor.sock");
    let exe = std::env::current_exe().map_err(BenchError::io("find the bench executable"))?;
    let mut command = std::process::Command::new(exe);
    command
        .arg("floor")
        .arg("--socket")
        .arg(&socket)
        .stdin(std::process::Stdio::null());
    let mut child = crate::procfs::spawn_pinned(command, core)?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if let Ok((200, body)) = crate::load::get_once(&socket, SECRET_PATH).await
            && body == BODY
        {
            return Ok((child, socket));
        }
        if let Some(status) = child.exited() {
            return Err(BenchError::Server(format!("floor server exited: {status}")));
        }
        if std::time::Instant::now() > deadline {
            return Err(BenchError::Server(
                "floor server not ready within 10 s".to_owned(),
            ));
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}
