//! Command line: `serve`, `check-config`, `reload`, `get`, `aws-credentials`, `render`, `exec`,
//! `flush`, `health`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use nix::sys::signal::Signal;

use crate::client::supervise::OnChange;

/// Default socket of the client commands.
pub const DEFAULT_SOCKET: &str = "/run/credagent/agent.sock";

/// credagent: a per-host credential agent.
#[derive(Debug, Parser)]
#[command(name = "credagent", version, about)]
pub struct Cli {
    /// Client commands: the uid the agent runs as; a server answering on the socket as neither
    /// root nor this uid is refused (exit 69). Default: root or the socket file's owner.
    #[arg(long, env = "CREDAGENT_AGENT_UID", global = true)]
    pub agent_uid: Option<u32>,
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
        /// fsync, rename), given --mode/--owner/--group before any byte is written; a symlink is
        /// refused.
        #[arg(long, short, required_if_eq("watch", "true"))]
        output: Option<PathBuf>,
        /// Permission bits of the --output file (octal).
        #[arg(long, default_value = "0600", value_parser = parse_file_mode)]
        mode: u32,
        /// Owner of the --output file: a user name or uid (changing it needs privilege).
        #[arg(long, requires = "output", value_parser = parse_owner)]
        owner: Option<u32>,
        /// Group of the --output file: a group name or gid.
        #[arg(long, requires = "output", value_parser = parse_group)]
        group: Option<u32>,
        /// Keep running: re-render when a secret of the template changes (the agent's change
        /// waits, one connection per secret) and rewrite --output only when its bytes differ.
        #[arg(long, requires = "output")]
        watch: bool,
        /// With --watch: after each rewrite, run this through `/bin/sh -c`.
        #[arg(long, requires = "watch", conflicts_with = "signal")]
        on_change: Option<String>,
        /// Kill the --on-change command (its process group) after this many seconds.
        #[arg(long, default_value_t = 30, requires = "on_change", value_parser = clap::value_parser!(u64).range(1..=86400))]
        on_change_timeout: u64,
        /// With --watch: after each rewrite, send this signal (`HUP`, `SIGHUP`, `1`) to the
        /// process whose pid is in --pid-file.
        #[arg(long, requires_all = ["watch", "pid_file"], value_parser = parse_signal)]
        signal: Option<Signal>,
        /// The file holding the pid for --signal (read anew at each change).
        #[arg(long, requires = "signal")]
        pid_file: Option<PathBuf>,
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
        #[arg(long = "env", required_unless_present = "aws")]
        bindings: Vec<String>,
        /// `SOURCE/PROFILE` of an aws-credentials profile: the child takes its credentials from
        /// the agent's container-credentials listener (a token file credagent keeps renewed).
        #[arg(long, value_name = "PROFILE_PATH", conflicts_with = "watch")]
        aws: Option<String>,
        /// Stay the command's parent and follow the secrets: on a change, do --on-change.
        #[arg(long)]
        watch: bool,
        /// With --watch: `restart` (SIGTERM, SIGKILL after --grace, start again with the new
        /// environment) or `signal:SIG` (e.g. `signal:HUP`).
        #[arg(long, requires = "watch", default_value = "restart", value_parser = parse_on_change)]
        on_change: OnChange,
        /// Seconds between SIGTERM and SIGKILL on a restart.
        #[arg(long, requires = "watch", default_value_t = 10, value_parser = clap::value_parser!(u64).range(0..=3600))]
        grace: u64,
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
    /// Print AWS role credentials as `credential_process` JSON (`SOURCE/PROFILE` of an
    /// `aws-credentials` source), for `credential_process = credagent aws-credentials …` in
    /// `~/.aws/config`. On failure one line on stderr and `get`'s exit codes.
    AwsCredentials {
        /// `SOURCE/PROFILE`, e.g. `roles/reader`.
        profile_path: String,
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

/// A signal by name (`HUP`, `SIGHUP`, any case) or number.
pub fn parse_signal(text: &str) -> Result<Signal, String> {
    let upper = text.trim().to_ascii_uppercase();
    if let Ok(number) = upper.parse::<i32>() {
        return Signal::try_from(number).map_err(|_| format!("{text:?} is not a signal number"));
    }
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse::<Signal>()
        .map_err(|_| format!("{text:?} is not a signal (e.g. HUP, USR1, TERM)"))
}

fn parse_on_change(text: &str) -> Result<OnChange, String> {
    match text.split_once(':') {
        None if text == "restart" => Ok(OnChange::Restart),
        Some(("signal", signal)) => parse_signal(signal).map(OnChange::Signal),
        _ => Err(format!("{text:?}: expected restart or signal:SIG")),
    }
}

/// A number, or a name looked up with `lookup`.
fn parse_id(text: &str, kind: &str, lookup: impl Fn(&str) -> Option<u32>) -> Result<u32, String> {
    text.parse::<u32>()
        .ok()
        .or_else(|| lookup(text))
        .ok_or_else(|| format!("no {kind} {text:?}"))
}

fn parse_owner(text: &str) -> Result<u32, String> {
    parse_id(text, "user", |name| {
        nix::unistd::User::from_name(name)
            .ok()
            .flatten()
            .map(|u| u.uid.as_raw())
    })
}

fn parse_group(text: &str) -> Result<u32, String> {
    parse_id(text, "group", |name| {
        nix::unistd::Group::from_name(name)
            .ok()
            .flatten()
            .map(|g| g.gid.as_raw())
    })
}

fn parse_file_mode(text: &str) -> Result<u32, String> {
    crate::config::parse_mode(text)
        .ok_or_else(|| format!("{text:?} is not an octal mode between 0000 and 0777"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_by_name_or_number() {
        for (text, want) in [
            ("HUP", Some(Signal::SIGHUP)),
            ("sighup", Some(Signal::SIGHUP)),
            ("USR1", Some(Signal::SIGUSR1)),
            ("15", Some(Signal::SIGTERM)),
            ("NOPE", None),
            ("999", None),
        ] {
            assert_eq!(parse_signal(text).ok(), want, "{text}");
        }
        assert_eq!(parse_on_change("restart"), Ok(OnChange::Restart));
        assert_eq!(
            parse_on_change("signal:HUP"),
            Ok(OnChange::Signal(Signal::SIGHUP))
        );
        assert!(parse_on_change("reload").is_err());
        assert!(parse_on_change("signal:").is_err());
    }

    #[test]
    fn watch_flags_need_their_companions() {
        let parse = |args: &[&str]| Cli::try_parse_from(args).map(|_| ());
        let owner = |who: &str| parse(&["credagent", "render", "t", "-o", "f", "--owner", who]);
        assert!(owner("root").is_ok() && owner("0").is_ok());
        assert!(owner("no-such-user-x").is_err());
        assert!(parse(&["credagent", "render", "t", "--watch"]).is_err());
        assert!(parse(&["credagent", "render", "t", "-o", "f", "--on-change", "x"]).is_err());
        assert!(
            parse(&[
                "credagent",
                "render",
                "t",
                "-o",
                "f",
                "--watch",
                "--signal",
                "HUP"
            ])
            .is_err()
        );
        assert!(
            parse(&[
                "credagent",
                "render",
                "t",
                "-o",
                "f",
                "--watch",
                "--on-change",
                "x",
                "--signal",
                "HUP",
                "--pid-file",
                "p"
            ])
            .is_err()
        );
        assert!(
            parse(&[
                "credagent",
                "render",
                "t",
                "-o",
                "f",
                "--watch",
                "--signal",
                "HUP",
                "--pid-file",
                "p"
            ])
            .is_ok()
        );
        assert!(
            parse(&[
                "credagent",
                "render",
                "t",
                "-o",
                "f",
                "--owner",
                "0",
                "--group",
                "0"
            ])
            .is_ok()
        );
        assert!(
            parse(&[
                "credagent",
                "exec",
                "--env",
                "A=f/x",
                "--grace",
                "3",
                "--",
                "true"
            ])
            .is_err()
        );
        assert!(
            parse(&[
                "credagent",
                "exec",
                "--watch",
                "--on-change",
                "signal:HUP",
                "--env",
                "A=f/x",
                "--",
                "true"
            ])
            .is_ok()
        );
    }
}
