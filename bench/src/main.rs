//! `credagent-bench`: measures the agent against a bare floor server in one run, plus the
//! agent-only figures (misses, expiry, memory, start), prints a Markdown report and writes it to
//! a file. Performance is judged here, never in a timed test; `--quick` only keeps the bench
//! from rotting (the test script runs it once).
//!
//! ```text
//! credagent-bench all [--quick] [--rounds N] [--secs S] [--out PATH] [--agent PATH]
//! credagent-bench quick                      # = all --quick
//! credagent-bench load agent|floor [--conns N] [--secs S]   # one long run, to profile (prints the pid)
//! credagent-bench burst [--conns N] [--secs S] [--agent PATH] # only the `?wait=` burst (S: settle)
//! credagent-bench floor --socket PATH        # the floor server (started by `all`)
//! ```
//!
//! `--agent PATH` names the credagent binary to measure (default: `credagent` next to this
//! executable). There is no option to run the AWS Secrets Manager Agent beside it: the issue's
//! comparisons with it were made by hand, and this bench does not start it.

mod agent;
mod aws;
mod burst;
mod checks;
mod error;
mod floor;
mod load;
mod oha;
mod procfs;
mod report;
mod throughput;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use error::BenchError;

/// What `all` runs.
#[derive(Debug, Clone)]
struct Options {
    quick: bool,
    rounds: usize,
    measure: Duration,
    out: PathBuf,
    agent: Option<PathBuf>,
}

enum Mode {
    All(Options),
    Load {
        floor: bool,
        conns: usize,
        secs: f64,
        agent: Option<PathBuf>,
    },
    Floor(PathBuf),
    Burst {
        conns: usize,
        settle: Duration,
        agent: Option<PathBuf>,
    },
}

fn parse_args(args: &[String]) -> Result<Mode, BenchError> {
    let mut iter = args.iter();
    let mode = iter.next().map(String::as_str);
    let mut quick = mode == Some("quick");
    let mut rounds = None;
    let mut secs = None;
    let mut out = None;
    let mut agent = None;
    let mut socket = None;
    let mut conns = None;
    let mut target = None;
    let value = |flag: &str, iter: &mut std::slice::Iter<'_, String>| {
        iter.next()
            .cloned()
            .ok_or_else(|| BenchError::Usage(format!("{flag} needs a value")))
    };
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "--quick" => quick = true,
            "--rounds" => rounds = Some(value(arg, &mut iter)?),
            "--secs" => secs = Some(value(arg, &mut iter)?),
            "--out" => out = Some(PathBuf::from(value(arg, &mut iter)?)),
            "--agent" => agent = Some(PathBuf::from(value(arg, &mut iter)?)),
            "--socket" => socket = Some(PathBuf::from(value(arg, &mut iter)?)),
            "--conns" => conns = Some(value(arg, &mut iter)?),
            "agent" | "floor" if mode == Some("load") && target.is_none() => {
                target = Some(arg.clone());
            }
            other => return Err(BenchError::Usage(format!("unknown argument {other:?}"))),
        }
    }
    match mode {
        Some("floor") => socket
            .map(Mode::Floor)
            .ok_or_else(|| BenchError::Usage("floor needs --socket PATH".to_owned())),
        Some("load") => Ok(Mode::Load {
            floor: target.as_deref() == Some("floor"),
            conns: conns
                .as_deref()
                .map_or(Ok(16), str::parse)
                .map_err(|_| BenchError::Usage("--conns: need a number".to_owned()))?,
            secs: secs
                .as_deref()
                .map_or(Ok(20.0), str::parse)
                .map_err(|_| BenchError::Usage("--secs: need seconds".to_owned()))?,
            agent,
        }),
        Some("burst") => Ok(Mode::Burst {
            conns: conns
                .as_deref()
                .map_or(Ok(4000), str::parse)
                .map_err(|_| BenchError::Usage("--conns: need a number".to_owned()))?,
            settle: Duration::from_secs_f64(
                secs.as_deref()
                    .map_or(Ok(10.0), str::parse)
                    .map_err(|_| BenchError::Usage("--secs: need seconds".to_owned()))?,
            ),
            agent,
        }),
        Some("all" | "quick") => {
            let rounds = match rounds {
                Some(r) => r.parse::<usize>().ok().filter(|r| *r >= 1).ok_or_else(|| {
                    BenchError::Usage(format!("--rounds {r:?}: need a number ≥ 1"))
                })?,
                None => 3,
            };
            let measure = match secs {
                Some(s) => s
                    .parse::<f64>()
                    .ok()
                    .filter(|s| s.is_finite() && *s > 0.0)
                    .map(Duration::from_secs_f64)
                    .ok_or_else(|| BenchError::Usage(format!("--secs {s:?}: need seconds > 0")))?,
                None if quick => Duration::from_millis(100),
                None => Duration::from_secs(2),
            };
            let out = out.unwrap_or_else(|| {
                PathBuf::from(if quick {
                    "bench-results/quick.md"
                } else {
                    "bench-results/latest.md"
                })
            });
            Ok(Mode::All(Options {
                quick,
                rounds,
                measure,
                out,
                agent,
            }))
        }
        Some(other) => Err(BenchError::Usage(format!("unknown mode {other:?}"))),
        None => Err(BenchError::Usage("no mode given".to_owned())),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = parse_args(&args).and_then(|mode| match mode {
        Mode::Floor(socket) => floor::run(&socket),
        Mode::All(options) => run_all(&options),
        Mode::Load {
            floor,
            conns,
            secs,
            agent,
        } => run_load(floor, conns, secs, agent),
        Mode::Burst {
            conns,
            settle,
            agent,
        } => run_burst(conns, settle, agent),
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err @ BenchError::Usage(_)) => {
            eprintln!("credagent-bench: {err}");
            ExitCode::from(2)
        }
        Err(err) => {
            eprintln!("credagent-bench: {err}");
            ExitCode::FAILURE
        }
    }
}

fn run_all(options: &Options) -> Result<(), BenchError> {
    let bin = agent::locate(options.agent.clone())?;
    let split = procfs::Split::detect();
    let cores = split.cores();
    // The load generator is this thread (a current-thread runtime), on its own core.
    procfs::pin_current_thread(split.client)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(BenchError::io("start the load generator's runtime"))?;
    let report = runtime.block_on(measure(options, &bin, split, cores))?;
    let text = report.markdown();
    println!("{text}");
    if let Some(dir) = options.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(BenchError::io(format!("create {}", dir.display())))?;
    }
    std::fs::write(&options.out, &text)
        .map_err(BenchError::io(format!("write {}", options.out.display())))?;
    eprintln!(
        "credagent-bench: report written to {}",
        options.out.display()
    );
    Ok(())
}

/// Only the `?wait=` burst, printed as the report's rows.
fn run_burst(conns: usize, settle: Duration, agent: Option<PathBuf>) -> Result<(), BenchError> {
    let bin = agent::locate(agent)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(BenchError::io("start the load generator's runtime"))?;
    let burst = runtime.block_on(burst::run(&bin, conns, settle, 120))?;
    print!("{}", report::burst_markdown(&burst));
    Ok(())
}

/// One long run against one server, for a profiler to attach to (`perf record -p PID`).
fn run_load(
    floor: bool,
    conns: usize,
    secs: f64,
    agent: Option<PathBuf>,
) -> Result<(), BenchError> {
    let bin = agent::locate(agent)?;
    let split = procfs::Split::detect();
    procfs::pin_current_thread(split.client)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(BenchError::io("start the load generator's runtime"))?;
    runtime.block_on(async {
        let scratch = agent::Scratch::new("load")?;
        scratch.secret("bench", floor::BODY)?;
        let config = agent::config(scratch.path(), agent::CacheSettings::default(), "");
        let (_guard, socket, pid) = if floor {
            let (child, socket) = floor::start(scratch.path(), split.server).await?;
            let pid = child.pid();
            (Err(child), socket, pid)
        } else {
            let agent = agent::Agent::start(&bin, &scratch, &config, split.server).await?;
            let (socket, pid) = (agent.socket().to_path_buf(), agent.pid());
            (Ok(agent), socket, pid)
        };
        eprintln!(
            "credagent-bench: {} pid {pid}, {conns} connections for {secs} s",
            if floor { "floor" } else { "agent" }
        );
        let outcome = load::run(&load::Spec {
            socket: &socket,
            path: floor::SECRET_PATH,
            conns,
            warmup: Duration::from_millis(500),
            measure: Duration::from_secs_f64(secs),
            server_pid: pid,
        })
        .await?;
        println!(
            "{:.0} req/s, server {:.1} µs CPU/request ({:.0}% of its core), p50/p99/p99.9 {:?}/{:?}/{:?}",
            outcome.rps(),
            outcome.server_us_per_req(),
            outcome.server_util() * 100.0,
            outcome.latency.p50,
            outcome.latency.p99,
            outcome.latency.p999
        );
        Ok(())
    })
}

async fn measure(
    options: &Options,
    bin: &std::path::Path,
    split: procfs::Split,
    cores: usize,
) -> Result<report::Report, BenchError> {
    let quick = options.quick;
    let meta = meta(options, bin, split, cores);
    eprintln!("credagent-bench: agent {}", bin.display());

    // Side by side: both servers up, runs interleaved; first pinned (server and load generator
    // on cores of their own), then unpinned, as the agent is deployed.
    eprintln!(
        "credagent-bench: side by side, pinned ({})",
        split.describe()
    );
    let (cells, audit_dropped) =
        side_by_side(options, bin, split.server, throughput::Generator::Own).await?;
    procfs::unpin_current_thread(&split)?;
    eprintln!("credagent-bench: side by side, unpinned (the scheduler places both)");
    let (unpinned, unpinned_dropped) =
        side_by_side(options, bin, None, throughput::Generator::Own).await?;
    let found = if quick { None } else { oha::find() };
    let (oha, oha_dropped) = match found {
        None if quick => (
            report::OhaSeries::Skipped("not run in a quick run".to_owned()),
            0,
        ),
        None => (
            report::OhaSeries::Skipped(
                "oha not found on PATH or in $OHA (cargo install oha --locked)".to_owned(),
            ),
            0,
        ),
        Some(path) => {
            eprintln!(
                "credagent-bench: side by side with oha, unpinned ({})",
                path.display()
            );
            let (cells, dropped) =
                side_by_side(options, bin, None, throughput::Generator::Oha(&path)).await?;
            (report::OhaSeries::Measured(cells), dropped)
        }
    };
    // As deployed: the agent with a worker (and a malloc arena) per CPU.
    eprintln!("credagent-bench: ?wait= burst");
    let burst = burst::run(
        bin,
        if quick { 200 } else { 4000 },
        Duration::from_secs(if quick { 1 } else { 10 }),
        120,
    )
    .await?;
    procfs::pin_current_thread(split.client)?;
    let audit_dropped = audit_dropped + unpinned_dropped + oha_dropped;

    eprintln!("credagent-bench: misses");
    let misses = checks::file_misses(bin, split.server).await?;
    let aws = aws::misses(
        bin,
        split.server,
        load::Timing {
            rounds: options.rounds,
            warmup: Duration::from_millis(if quick { 50 } else { 300 }),
            measure: options.measure,
        },
    )
    .await?;
    eprintln!("credagent-bench: expiry");
    let expiry = checks::expiry(
        bin,
        split.server,
        Duration::from_millis(if quick { 2500 } else { 7000 }),
    )
    .await?;
    eprintln!("credagent-bench: memory");
    let memory = checks::memory(bin, split.server, if quick { 1000 } else { 10_000 }).await?;
    eprintln!("credagent-bench: start");
    let start = checks::start(bin, split.server, if quick { 1 } else { 9 }).await?;
    Ok(report::Report {
        meta,
        quick,
        cells,
        unpinned,
        audit_dropped,
        oha,
        misses,
        aws,
        expiry,
        memory,
        start,
        burst,
    })
}

/// One side-by-side series (every round × connection count, agent then floor) with both
/// servers on `server_core` (None: not pinned), loaded by `generator`; the audit lines the agent
/// dropped meanwhile.
async fn side_by_side(
    options: &Options,
    bin: &std::path::Path,
    server_core: Option<usize>,
    generator: throughput::Generator<'_>,
) -> Result<(Vec<throughput::Cell>, u64), BenchError> {
    let scratch = agent::Scratch::new("throughput")?;
    scratch.secret("bench", floor::BODY)?;
    let config = agent::config(scratch.path(), agent::CacheSettings::default(), "");
    let agent = agent::Agent::start(bin, &scratch, &config, server_core).await?;
    let (status, body) = load::get_once(agent.socket(), floor::SECRET_PATH)
        .await
        .map_err(BenchError::io("first read from the agent"))?;
    if status != 200 || body != floor::BODY {
        return Err(BenchError::Server(format!(
            "agent answered {status} for {}; log:\n{}",
            floor::SECRET_PATH,
            agent.log_text()
        )));
    }
    let (floor_child, floor_socket) = floor::start(scratch.path(), server_core).await?;
    let timing = load::Timing {
        rounds: options.rounds,
        warmup: if options.quick {
            Duration::from_millis(50)
        } else {
            Duration::from_millis(500)
        },
        measure: options.measure,
    };
    let agent_target = load::Target {
        socket: agent.socket(),
        pid: agent.pid(),
        path: floor::SECRET_PATH,
    };
    let floor_target = load::Target {
        socket: &floor_socket,
        pid: floor_child.pid(),
        path: floor::SECRET_PATH,
    };
    let progress = |c: &throughput::Cell| {
        eprintln!(
            "  round {} conns {:>2}: agent {:>8.0} req/s {:>5.1} µs/req | floor {:>8.0} req/s {:>5.1} µs/req | ratio {:.2}",
            c.round,
            c.conns,
            c.agent.rps(),
            c.agent.server_us_per_req(),
            c.floor.rps(),
            c.floor.server_us_per_req(),
            c.rps_ratio()
        );
    };
    // oha needs a moment to start and connect: a longer warm-up than the bench's own.
    let timing = match generator {
        throughput::Generator::Own => timing,
        throughput::Generator::Oha(_) => load::Timing {
            warmup: timing.warmup.max(Duration::from_secs(1)),
            ..timing
        },
    };
    let cells = throughput::run(agent_target, floor_target, generator, timing, progress).await?;
    let audit_dropped = agent.metric("credagent_audit_dropped_total").await? as u64;
    drop(floor_child);
    drop(agent);
    Ok((cells, audit_dropped))
}

fn meta(
    options: &Options,
    bin: &std::path::Path,
    split: procfs::Split,
    cores: usize,
) -> Vec<(String, String)> {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                l.strip_prefix("model name")?
                    .split_once(':')
                    .map(|(_, v)| v.trim().to_owned())
            })
        })
        .unwrap_or_else(|| "unknown".to_owned());
    let kernel = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    vec![
        (
            "command".to_owned(),
            format!(
                "credagent-bench {}",
                std::env::args().skip(1).collect::<Vec<_>>().join(" ")
            ),
        ),
        (
            "build".to_owned(),
            if cfg!(debug_assertions) { "debug" } else { "release" }.to_owned(),
        ),
        ("agent".to_owned(), bin.display().to_string()),
        ("machine".to_owned(), format!("{cpu}, {cores} CPU(s), Linux {kernel}")),
        (
            "load average at start".to_owned(),
            load.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
        ),
        (
            "CPU split".to_owned(),
            format!(
                "{} for the first table; not pinned (every CPU the bench started with) for the second and third",
                split.describe()
            ),
        ),
        (
            "load generator".to_owned(),
            "the bench's own tokio client (current-thread runtime, raw HTTP/1.1 keep-alive, one request in flight per connection) for the first two tables; oha for the third".to_owned(),
        ),
        ("oha".to_owned(), oha_version()),
        (
            "runs".to_owned(),
            format!(
                "{} rounds × (1, 16, 64 connections; oha: 1, 16) × (agent, floor), {:.1} s measured after a warm-up",
                options.rounds,
                options.measure.as_secs_f64()
            ),
        ),
        (
            "agent config".to_owned(),
            "file source, [[allow]] for this uid, audit lines to a file, lock_memory = best-effort, log level info".to_owned(),
        ),
    ]
}

/// oha's path and version, or that it was not found.
fn oha_version() -> String {
    let Some(path) = oha::find() else {
        return "not found (the oha table is skipped)".to_owned();
    };
    let version = std::process::Command::new(&path)
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    format!("{} ({version})", path.display())
}
