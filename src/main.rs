//! The `credagent` binary: parse the command line, run, map errors to exit codes.
//! The only place that exits.

use std::process::ExitCode;

use clap::Parser;
use credagent::cli::{Cli, Command};
use credagent::client::rerender::Action;
use credagent::client::{ClientError, GetOptions, commands};
use credagent::output::FileAttrs;
use credagent::{RunError, config};
use std::time::Duration;

/// Exit codes (sysexits), so `RestartPreventExitStatus=78 71 77` stops restart loops on bad
/// config, an unlockable memory limit, or credentials a backend refused for good.
mod exit {
    pub const FAILURE: u8 = 1;
    pub const UNAVAILABLE: u8 = 69;
    pub const SOFTWARE: u8 = 70;
    pub const OSERR: u8 = 71;
    pub const CANTCREAT: u8 = 73;
    pub const TEMPFAIL: u8 = 75;
    pub const NOPERM: u8 = 77;
    pub const CONFIG: u8 = 78;
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(uid) = cli.agent_uid {
        credagent::client::expect_agent_uid(uid);
    }
    match cli.command {
        Command::Serve { config, demo } => serve(config, demo),
        Command::CheckConfig { config, demo } => check_config(config, demo),
        Command::Reload { pid } => exit_code(commands::reload(pid)),
        Command::Get {
            name,
            field,
            version_id,
            version_stage,
            version,
            label,
            socket,
        } => {
            let options = GetOptions {
                field,
                version_id,
                version_stage,
                version,
                label,
            };
            client_main(|rt| commands::get(rt, &socket, &name, &options))
        }
        Command::Render {
            template,
            output,
            mode,
            owner,
            group,
            watch,
            on_change,
            on_change_timeout,
            signal,
            pid_file,
            schemes,
            socket,
        } => {
            let attrs = FileAttrs { mode, owner, group };
            if !watch {
                return client_main(|rt| {
                    commands::render(rt, &socket, &template, &schemes, output.as_deref(), &attrs)
                });
            }
            credagent::logging::init(credagent::logging::LogFormat::Auto);
            let action = match (on_change, signal, pid_file) {
                (Some(command), _, _) => Action::Command {
                    command,
                    timeout: Duration::from_secs(on_change_timeout),
                },
                (None, Some(signal), Some(pid_file)) => Action::Signal { signal, pid_file },
                _ => Action::None,
            };
            let output = output.unwrap_or_default();
            client_main(|rt| {
                commands::render_watch(rt, &socket, &template, &schemes, &output, attrs, action)
            })
        }
        Command::Exec {
            bindings,
            aws,
            watch,
            on_change,
            grace,
            schemes,
            socket,
            command,
        } => {
            if let Some(profile) = aws {
                return client_status(|rt| {
                    commands::exec_aws(rt, &socket, &profile, &bindings, &schemes, &command)
                });
            }
            if !watch {
                return client_main(|rt| {
                    commands::exec(rt, &socket, &bindings, &schemes, &command)
                });
            }
            credagent::logging::init(credagent::logging::LogFormat::Auto);
            client_status(|rt| {
                commands::exec_watch(
                    rt,
                    &socket,
                    &bindings,
                    &schemes,
                    &command,
                    on_change,
                    Duration::from_secs(grace),
                )
            })
        }
        // issue 29: the value of an aws-credentials profile is the credential_process JSON.
        Command::AwsCredentials {
            profile_path,
            socket,
        } => client_main(|rt| commands::get(rt, &socket, &profile_path, &GetOptions::default())),
        Command::Flush { pattern, socket } => {
            client_main(|rt| commands::flush(rt, &socket, pattern.as_deref()))
        }
        // A probe: 0 or 1, whatever failed (an agent that cannot be reached is not healthy) —
        // but 69 for a server that is not the agent.
        Command::Health { ready, socket } => {
            let mut wrong_server = false;
            let code = client_main(|rt| {
                let result = commands::health(rt, &socket, ready);
                wrong_server = matches!(result, Err(ClientError::WrongServer { .. }));
                result
            });
            match code {
                code if code == ExitCode::SUCCESS => code,
                _ if wrong_server => ExitCode::from(exit::UNAVAILABLE),
                _ => ExitCode::from(exit::FAILURE),
            }
        }
    }
}

fn load(path: std::path::PathBuf, demo: bool) -> Result<config::Config, config::ConfigError> {
    if demo {
        config::demo()
    } else {
        config::load(&path)
    }
}

fn check_config(path: std::path::PathBuf, demo: bool) -> ExitCode {
    match load(path, demo) {
        Ok(cfg) => {
            for warning in cfg.warnings() {
                eprintln!("credagent: warning: {warning}");
            }
            println!(
                "{}: ok: socket {}, {} source(s) [{}], {} allow rule(s), cache ttl {}s, lock_memory {:?}",
                cfg.path.display(),
                cfg.server.socket.display(),
                cfg.sources.len(),
                cfg.sources.keys().cloned().collect::<Vec<_>>().join(", "),
                cfg.rules.len(),
                cfg.cache.ttl.as_secs(),
                cfg.cache.lock_memory,
            );
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("credagent: invalid config: {err}");
            ExitCode::from(exit::CONFIG)
        }
    }
}

fn serve(path: std::path::PathBuf, demo: bool) -> ExitCode {
    let loaded = load(path, demo);
    // The log format is the config's; a config that does not load is logged in the default one.
    credagent::logging::init(
        loaded
            .as_ref()
            .map(|cfg| cfg.log.format)
            .unwrap_or_default(),
    );
    let cfg = match loaded {
        Ok(cfg) => cfg,
        Err(err) => {
            tracing::error!("invalid config: {err}");
            return ExitCode::from(exit::CONFIG);
        }
    };
    let rt = match credagent::server::runtime::build() {
        Ok(rt) => rt,
        Err(err) => {
            tracing::error!("cannot start the async runtime: {err}");
            return ExitCode::from(exit::OSERR);
        }
    };
    for warning in cfg.warnings() {
        tracing::warn!("{warning}");
    }
    let result = rt.block_on(credagent::run(cfg, shutdown_signal()));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err}");
            ExitCode::from(match err {
                RunError::Config(_) => exit::CONFIG,
                RunError::Memory(_) => exit::OSERR,
                RunError::Server(_) | RunError::Audit(_) => exit::CANTCREAT,
                RunError::Source(err) if err.retry_may_help() => exit::TEMPFAIL,
                RunError::Source(_) => exit::NOPERM,
                RunError::Signal(_) => exit::SOFTWARE,
            })
        }
    }
}

/// SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            tracing::error!("cannot install SIGTERM/SIGINT handlers; stop with SIGKILL");
            std::future::pending::<()>().await;
        }
    }
}

fn client_main(f: impl FnOnce(&tokio::runtime::Runtime) -> Result<(), ClientError>) -> ExitCode {
    client_status(|rt| f(rt).map(|()| 0))
}

/// As [`client_main`] for a command whose success carries an exit code (a child's status).
fn client_status(f: impl FnOnce(&tokio::runtime::Runtime) -> Result<u8, ClientError>) -> ExitCode {
    // What a client command holds is locked best effort: past the caller's memlock limit it is
    // ordinary memory, not a failure (README "Memory locking").
    credagent::secure_mem::set_policy(credagent::secure_mem::LockPolicy::BestEffort);
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("credagent: cannot start the async runtime: {err}");
            return ExitCode::from(exit::OSERR);
        }
    };
    match f(&rt) {
        Ok(code) => ExitCode::from(code),
        Err(err) => exit_code(Err(err)),
    }
}

/// A client command's outcome as an exit code: 69 when no agent could be reached (or
/// signalled), 1 for any other failure.
fn exit_code(result: Result<(), ClientError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("credagent: {err}");
            ExitCode::from(match err {
                ClientError::Connect { .. }
                | ClientError::Signal { .. }
                | ClientError::WrongServer { .. } => exit::UNAVAILABLE,
                ClientError::Server { .. } | ClientError::Usage(_) => exit::FAILURE,
            })
        }
    }
}
