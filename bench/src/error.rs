//! The bench's one error type. A bench run either produces every figure or stops with the
//! step that failed; it never prints a number it could not measure.

use std::path::PathBuf;

/// Why a bench step failed.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Bad command line.
    #[error(
        "{0}\n\nusage: credagent-bench all [--quick] [--rounds N] [--secs S] [--out PATH] [--agent PATH]"
    )]
    Usage(String),
    /// The agent binary is not where the bench looks for it.
    #[error(
        "agent binary not found at {0}: build it first with `cargo build --release --bin credagent` \
         (or `cargo build --bin credagent` for --quick in debug), or pass --agent PATH"
    )]
    AgentMissing(PathBuf),
    /// A file or process operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What the bench was doing.
        what: String,
        /// Cause.
        source: std::io::Error,
    },
    /// A server did not start or answer as expected.
    #[error("{0}")]
    Server(String),
    /// The load run saw failed requests (a broken server is not a fast one).
    #[error("{0}")]
    Load(String),
}

impl BenchError {
    /// Wraps an I/O error with what was being done.
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BenchError {
        let what = what.into();
        move |source| BenchError::Io { what, source }
    }
}
