//! The client commands: each runs one request flow against the agent on a runtime it is given,
//! writes its output (stdout, a file, or a child's environment) and returns a [`ClientError`]
//! for `main` to turn into an exit code. Nothing here exits.

use std::io::Write;
use std::path::Path;

use tokio::runtime::Runtime;

use super::{ClientError, GetOptions};

fn write_stdout(bytes: &[u8]) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes).and_then(|()| out.flush())
}

/// `credagent get`: the value on stdout, nothing else.
pub fn get(
    rt: &Runtime,
    socket: &Path,
    name: &str,
    options: &GetOptions,
) -> Result<(), ClientError> {
    let value = rt.block_on(super::get(socket, name, options))?;
    write_stdout(&value).map_err(|e| ClientError::Usage(format!("cannot write to stdout: {e}")))
}

/// The default schemes with `--scheme`/`$CREDAGENT_SCHEMES` items applied.
fn schemes_of(items: &[String]) -> Result<crate::template::Schemes, ClientError> {
    crate::template::Schemes::with(
        items
            .iter()
            .map(|item| item.trim())
            .filter(|item| !item.is_empty()),
    )
    .map_err(|e| ClientError::Usage(format!("--scheme {e}")))
}

/// `credagent flush`: how many values were dropped.
pub fn flush(rt: &Runtime, socket: &Path, pattern: Option<&str>) -> Result<(), ClientError> {
    let flushed = rt.block_on(super::flush(socket, pattern))?;
    println!("flushed {flushed}");
    Ok(())
}

/// `credagent health [--ready]`: nothing on stdout; the caller maps any error to exit 1.
pub fn health(rt: &Runtime, socket: &Path, ready: bool) -> Result<(), ClientError> {
    rt.block_on(super::health(socket, ready))
}

/// `credagent render TEMPLATE [-o FILE]`: the rendered template on stdout or, atomically and
/// privately, in FILE (see `output`). The rendered bytes are wiped once written.
pub fn render(
    rt: &Runtime,
    socket: &Path,
    template: &Path,
    schemes: &[String],
    output: Option<&Path>,
    attrs: &crate::output::FileAttrs,
) -> Result<(), ClientError> {
    let schemes = schemes_of(schemes)?;
    // Wiped when dropped (locked memory).
    let rendered = rt.block_on(super::template_file::render(
        socket,
        template,
        &schemes,
        attrs.owner,
    ))?;
    let written = match output {
        Some(path) => crate::output::write_private(path, rendered.as_slice(), attrs)
            .map_err(|e| e.to_string()),
        None => write_stdout(rendered.as_slice()).map_err(|e| e.to_string()),
    };
    written.map_err(|e| ClientError::Usage(format!("cannot write the rendered file: {e}")))
}

/// `credagent render TEMPLATE -o FILE --watch`: see [`super::rerender`]. Returns on
/// SIGTERM/SIGINT, or on an error at start.
pub fn render_watch(
    rt: &Runtime,
    socket: &Path,
    template: &Path,
    schemes: &[String],
    output: &Path,
    attrs: crate::output::FileAttrs,
    action: super::rerender::Action,
) -> Result<(), ClientError> {
    let schemes = schemes_of(schemes)?;
    rt.block_on(super::rerender::run(super::rerender::RenderWatch {
        socket,
        template,
        schemes: &schemes,
        output,
        attrs,
        action,
    }))
}

/// `credagent exec --watch … -- CMD`: see [`super::supervise`]. Returns the child's exit code.
pub fn exec_watch(
    rt: &Runtime,
    socket: &Path,
    bindings: &[String],
    schemes: &[String],
    command: &[String],
    on_change: super::supervise::OnChange,
    grace: std::time::Duration,
) -> Result<u8, ClientError> {
    let schemes = schemes_of(schemes)?;
    rt.block_on(super::supervise::run(super::supervise::ExecWatch {
        socket,
        bindings,
        schemes: &schemes,
        command,
        on_change,
        grace,
    }))
}

/// `credagent exec --aws PROFILE_PATH [--env …] -- CMD`: the child's exit code.
pub fn exec_aws(
    rt: &Runtime,
    socket: &Path,
    profile: &str,
    bindings: &[String],
    schemes: &[String],
    command: &[String],
) -> Result<u8, ClientError> {
    let schemes = schemes_of(schemes)?;
    rt.block_on(super::aws::run(super::aws::ExecAws {
        socket,
        profile,
        bindings,
        schemes: &schemes,
        command,
    }))
}

/// `credagent exec --env VAR=SOURCE/ID … -- CMD`: replaces this process with CMD, the secrets in
/// its environment. Returns only on failure.
pub fn exec(
    rt: &Runtime,
    socket: &Path,
    bindings: &[String],
    schemes: &[String],
    command: &[String],
) -> Result<(), ClientError> {
    let schemes = schemes_of(schemes)?;
    let bindings = super::bindings::Bindings::parse(bindings, &schemes)?;
    let current = rt.block_on(super::watch::fetch_once(socket, &bindings.watched))?;
    let (program, args) = command
        .split_first()
        .ok_or_else(|| ClientError::Usage("no command given".to_owned()))?;
    let mut cmd = std::process::Command::new(program);
    cmd.args(args).envs(bindings.env(&current));
    // SECURITY: the program gets its standard streams and nothing else of ours.
    crate::secure_mem::close_other_fds_on_exec(&mut cmd);
    let err = std::os::unix::process::CommandExt::exec(&mut cmd);
    Err(ClientError::Usage(format!("cannot run {program}: {err}")))
}

/// `credagent reload --pid PID`: SIGHUP to the agent (so a unit's `ExecReload=` needs no
/// `/bin/kill`).
pub fn reload(pid: i32) -> Result<(), ClientError> {
    if pid <= 0 {
        return Err(ClientError::Usage(format!(
            "reload: {pid} is not a process id"
        )));
    }
    super::trust::check_is_credagent(pid)
        .map_err(|reason| ClientError::Usage(format!("reload: {reason}")))?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGHUP,
    )
    .map_err(|source| ClientError::Signal { pid, source })
}
