//! A slow link in front of a real server: a loopback TCP proxy that holds every HTTP request for a
//! fixed delay before passing it on, and counts the requests in flight through it (the most at
//! once is what the backend saw). Tests of fetch limits use it between the agent and moto.
//!
//! It understands just enough HTTP/1.1 for the agent's SDK clients: a request is a head and a
//! `Content-Length` body (no chunked requests); it goes upstream on a fresh connection with
//! `Connection: close`, the response is whatever upstream sends until it closes, and the client's
//! connection is closed after it. SigV4 does not sign `Connection`, and the `Host` header is
//! passed on unchanged, so signatures still verify.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

/// Largest request head accepted.
const MAX_HEAD: usize = 64 * 1024;

#[derive(Debug, Default)]
struct Counters {
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    requests: AtomicUsize,
}

/// The proxy; stops accepting when dropped.
pub struct DelayProxy {
    pub port: u16,
    pub url: String,
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
}

impl DelayProxy {
    /// Listens on a free loopback port and forwards to `127.0.0.1:upstream`, each request held
    /// `delay` first.
    pub fn start(upstream: u16, delay: Duration) -> DelayProxy {
        let listener = TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let counters = Arc::new(Counters::default());
        let stop = Arc::new(AtomicBool::new(false));
        {
            let (counters, stop) = (counters.clone(), stop.clone());
            std::thread::spawn(move || {
                for client in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(client) = client else { continue };
                    let counters = counters.clone();
                    std::thread::spawn(move || {
                        let _ = serve(client, upstream, delay, &counters);
                    });
                }
            });
        }
        DelayProxy {
            port,
            url: format!("http://127.0.0.1:{port}"),
            counters,
            stop,
        }
    }

    /// The most requests that were in flight upstream at once since the last reset.
    pub fn max_in_flight(&self) -> usize {
        self.counters.max_in_flight.load(Ordering::SeqCst)
    }

    /// Requests passed on since the last reset.
    pub fn requests(&self) -> usize {
        self.counters.requests.load(Ordering::SeqCst)
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> usize {
        self.counters.in_flight.load(Ordering::SeqCst)
    }

    /// Zeroes the request count and the high-water mark (to the requests in flight now).
    pub fn reset(&self) {
        self.counters.requests.store(0, Ordering::SeqCst);
        self.counters
            .max_in_flight
            .store(self.in_flight(), Ordering::SeqCst);
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Relays one request of a client connection, then closes it (the response, read upstream to
/// EOF, says `Connection: close`).
fn serve(
    client: TcpStream,
    upstream: u16,
    delay: Duration,
    counters: &Counters,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(client.try_clone()?);
    let mut client = client;
    let Some(request) = read_request(&mut reader)? else {
        return Ok(());
    };
    let now = counters.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    counters.max_in_flight.fetch_max(now, Ordering::SeqCst);
    counters.requests.fetch_add(1, Ordering::SeqCst);
    std::thread::sleep(delay);
    let response = forward(upstream, &request);
    counters.in_flight.fetch_sub(1, Ordering::SeqCst);
    client.write_all(&response?)?;
    client.shutdown(std::net::Shutdown::Both)
}

/// One request (head with `Connection: close`, then its body), or `None` at a clean EOF.
fn read_request(reader: &mut BufReader<TcpStream>) -> std::io::Result<Option<Vec<u8>>> {
    let mut head = Vec::new();
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return if head.is_empty() {
                Ok(None)
            } else {
                Err(std::io::Error::other("EOF inside a request head"))
            };
        }
        if head.len() + line.len() > MAX_HEAD {
            return Err(std::io::Error::other("request head too large"));
        }
        if line == "\r\n" {
            break;
        }
        let lower = line.to_ascii_lowercase();
        if lower.starts_with("connection:") {
            continue;
        }
        if let Some(value) = lower.strip_prefix("content-length:") {
            length = value
                .trim()
                .parse()
                .map_err(|_| std::io::Error::other("bad Content-Length"))?;
        }
        head.extend_from_slice(line.as_bytes());
    }
    head.extend_from_slice(b"Connection: close\r\n\r\n");
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    head.extend_from_slice(&body);
    Ok(Some(head))
}

/// Sends `request` upstream on a fresh connection; returns the response read to EOF.
fn forward(upstream: u16, request: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut server = TcpStream::connect(("127.0.0.1", upstream))?;
    server.set_read_timeout(Some(Duration::from_secs(30)))?;
    server.write_all(request)?;
    let mut response = Vec::new();
    server.read_to_end(&mut response)?;
    Ok(response)
}
