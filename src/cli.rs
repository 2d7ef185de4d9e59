//! Command line: `serve`, `check-config`, `reload`, `get`, `render`, `exec`, `flush`, `health`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Default socket of the client commands.
pub const DEFAULT_SOCKET: &str = "/run/credagent/agent.sock";

/// credagent: a per-host credential agent.
#[derive(Debug, Parser)]
#[command(name = "credagent", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent.
    Serve {
        /// Config file.
        #[arg(long, default_value = crate::config::DEFAULT_PATH, conflicts_with = "demo")]
        config: PathBuf,
        /// Run on the embedded demo config (serves ./examples/secrets on ./run/credagent.sock).
        #[arg(long)]
        demo: bool,
    },
    /// Validate a config file and print a one-line summary.
    CheckConfig {
        /// Config file.
        #[arg(long, default_value = crate::config::DEFAULT_PATH, conflicts_with = "demo")]
        config: PathBuf,
        /// Check the embedded demo config instead.
        #[arg(long)]
        demo: bool,
    },
    /// Ask a running agent to re-read its config (sends it SIGHUP; the unit's `ExecReload=`).
    Reload {
        /// The agent's process id (`$MAINPID` in a unit).
        #[arg(long)]
        pid: i32,
    },
    /// Print a secret's value (`SOURCE/ID`) to stdout.
    Get {
        /// `SOURCE/ID`, e.g. `files/demo-password`.
        name: String,
        /// One top-level field of a JSON value.
        #[arg(long)]
        field: Option<String>,
        /// AWS version id.
        #[arg(long)]
        version_id: Option<String>,
        /// AWS version stage.
        #[arg(long)]
        version_stage: Option<String>,
        /// Vault KV or SSM parameter version.
        #[arg(long)]
        version: Option<u64>,
        /// SSM parameter label.
        #[arg(long)]
        label: Option<String>,
        /// Agent socket.
        #[arg(long, env = "CREDAGENT_SOCKET", default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Fill `{{ secret SOURCE/ID [field=KEY] }}` placeholders of a template file.
    Render {
        /// The template.
        template: PathBuf,
        /// Write here instead of stdout: atomically (random temporary name, O_EXCL|O_NOFOLLOW,
        /// fsync, rename), created with --mode before any byte is written; a symlink is refused.
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// Permission bits of the --output file (octal).
        #[arg(long, default_value = "0600", value_parser = parse_file_mode)]
        mode: u32,
        /// `SCHEME=SOURCE` for `{{ secret SCHEME://PATH }}`; repeatable; also
        /// `$CREDAGENT_SCHEMES` (comma-separated). Defaults: awsSecret=aws, s3=s3,
        /// gopass=gopass, env=env.
        #[arg(long = "scheme", env = "CREDAGENT_SCHEMES", value_delimiter = ',')]
        schemes: Vec<String>,
        /// Agent socket.
        #[arg(long, env = "CREDAGENT_SOCKET", default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Run a command with secrets in its environment: `exec --env VAR=SOURCE/ID[#FIELD] -- CMD…`.
    Exec {
        /// `VAR=SOURCE/ID` or `VAR=SOURCE/ID#FIELD` (or `VAR=SCHEME://PATH[#FIELD]`); repeatable.
        #[arg(long = "env", required = true)]
        bindings: Vec<String>,
        /// `SCHEME=SOURCE`, as for `render`; repeatable; also `$CREDAGENT_SCHEMES`.
        #[arg(long = "scheme", env = "CREDAGENT_SCHEMES", value_delimiter = ',')]
        schemes: Vec<String>,
        /// Agent socket.
        #[arg(long, env = "CREDAGENT_SOCKET", default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Probe a running agent: exit 0 when it answers `200`, 1 otherwise (with the reason on
    /// stderr); an exec probe for containers without a shell.
    Health {
        /// Ask `/v1/ready` (prefetched secrets cached, sources up) instead of `/v1/health`.
        #[arg(long)]
        ready: bool,
        /// Agent socket.
        #[arg(long, env = "CREDAGENT_SOCKET", default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Flush cached secrets (all, or those matching a glob over `SOURCE/ID`).
    Flush {
        /// Glob, e.g. `aws/prod/*`.
        pattern: Option<String>,
        /// Agent socket.
        #[arg(long, env = "CREDAGENT_SOCKET", default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
}

fn parse_file_mode(text: &str) -> Result<u32, String> {
    crate::config::parse_mode(text)
        .ok_or_else(|| format!("{text:?} is not an octal mode between 0000 and 0777"))
}
