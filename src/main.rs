//! The `credagent` binary: parse the command line, run, map errors to exit codes.
//! The only place that exits.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use credagent::cli::{Cli, Command};
use credagent::client::{self, ClientError, GetOptions};
use credagent::{RunError, config};

/// Exit codes (sysexits), so `RestartPreventExitStatus=78 71` stops restart loops on bad config
/// or an unlockable memory limit.
mod exit {
    pub const FAILURE: u8 = 1;
    pub const UNAVAILABLE: u8 = 69;
    pub const SOFTWARE: u8 = 70;
    pub const OSERR: u8 = 71;
    pub const CANTCREAT: u8 = 73;
    pub const TEMPFAIL: u8 = 75;
    pub const CONFIG: u8 = 78;
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config, demo } => serve(config, demo),
        Command::CheckConfig { config, demo } => check_config(config, demo),
        Command::Reload { pid } => reload(pid),
        Command::Get {
            name,
            field,
            version_id,
            version_stage,
            version,
            socket,
        } => {
            let options = GetOptions {
                field,
                version_id,
                version_stage,
                version,
            };
            client_main(|rt| {
                rt.block_on(async {
                    let value = client::get(&socket, &name, &options).await?;
                    let mut out = std::io::stdout().lock();
                    out.write_all(&value)
                        .and_then(|()| out.flush())
                        .map_err(|e| ClientError::Usage(format!("cannot write to stdout: {e}")))
                })
            })
        }
        Command::Render {
            template,
            output,
            mode,
            socket,
        } => client_main(|rt| {
            let mut rendered = rt.block_on(client::render(&socket, &template))?;
            let written = match &output {
                Some(path) => credagent::output::write_private(path, &rendered, mode)
                    .map_err(|e| e.to_string()),
                None => {
                    let mut out = std::io::stdout().lock();
                    out.write_all(&rendered)
                        .and_then(|()| out.flush())
                        .map_err(|e| e.to_string())
                }
            };
            zeroize::Zeroize::zeroize(&mut rendered);
            written.map_err(|e| ClientError::Usage(format!("cannot write the rendered file: {e}")))
        }),
        Command::Exec {
            bindings,
            socket,
            command,
        } => client_main(|rt| {
            let values = rt.block_on(client::fetch_bindings(&socket, &bindings))?;
            let (program, args) = command
                .split_first()
                .ok_or_else(|| ClientError::Usage("no command given".to_owned()))?;
            let mut cmd = std::process::Command::new(program);
            cmd.args(args);
            for (var, value) in &values {
                cmd.env(
                    var,
                    <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(value),
                );
            }
            // Only returns on failure.
            let err = std::os::unix::process::CommandExt::exec(&mut cmd);
            Err(ClientError::Usage(format!("cannot run {program}: {err}")))
        }),
        Command::Flush { pattern, socket } => client_main(|rt| {
            rt.block_on(async {
                let flushed = client::flush(&socket, pattern.as_deref()).await?;
                println!("flushed {flushed}");
                Ok(())
            })
        }),
    }
}

fn init_logging() {
    let mut filter = tracing_subscriber::EnvFilter::try_from_env("CREDAGENT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // SECURITY: at debug/trace these libraries log request and response bodies (secret values,
    // tokens, signed headers). Cap them whatever CREDAGENT_LOG asks for.
    for target in [
        "aws_smithy_runtime",
        "aws_smithy_runtime_api",
        "aws_smithy_http",
        "aws_smithy_http_client",
        "aws_sdk_secretsmanager",
        "aws_sdk_sts",
        "aws_config",
        "aws_sigv4",
        "hyper",
        "hyper_util",
        "h2",
        "rustls",
    ] {
        if let Ok(directive) = format!("{target}=info").parse() {
            filter = filter.add_directive(directive);
        }
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
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

/// `kill -HUP PID` without depending on a `kill` binary (a minimal system has none).
fn reload(pid: i32) -> ExitCode {
    if pid <= 0 {
        eprintln!("credagent: reload: {pid} is not a process id");
        return ExitCode::from(exit::FAILURE);
    }
    let target = nix::unistd::Pid::from_raw(pid);
    match nix::sys::signal::kill(target, nix::sys::signal::Signal::SIGHUP) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("credagent: reload: cannot signal process {pid}: {err}");
            ExitCode::from(exit::UNAVAILABLE)
        }
    }
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}

fn serve(path: std::path::PathBuf, demo: bool) -> ExitCode {
    init_logging();
    let cfg = match load(path, demo) {
        Ok(cfg) => cfg,
        Err(err) => {
            tracing::error!("invalid config: {err}");
            return ExitCode::from(exit::CONFIG);
        }
    };
    let rt = match runtime() {
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
                RunError::Source(_) => exit::TEMPFAIL,
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
        Ok(()) => ExitCode::SUCCESS,
        Err(err @ ClientError::Connect { .. }) => {
            eprintln!("credagent: {err}");
            ExitCode::from(exit::UNAVAILABLE)
        }
        Err(err) => {
            eprintln!("credagent: {err}");
            ExitCode::from(exit::FAILURE)
        }
    }
}
