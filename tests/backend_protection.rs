//! What one allowed caller can make the agent ask of a backend, against a real moto server with
//! signature and IAM checking on: with `cache.negative_ttl_secs`, reads of a missing name reach
//! Secrets Manager once per negative TTL (and a secret created meanwhile is served after a flush
//! by API, control file or reload, or after the TTL); with `max_concurrent_fetches`, a burst of distinct misses through a slow link
//! never puts more calls in flight than the limit, the overflow is `503 source_busy`, and the
//! source serves again once the burst is over.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::delay_proxy::DelayProxy;
use common::moto::{Moto, key_source};
use common::{Agent, TestDir, config_allowing_all as config, wait_until};

const GET: &str = "secretsmanager.GetSecretValue";

#[test]
fn fifty_reads_of_a_missing_name_make_one_backend_call_until_a_flush_or_reload_shows_the_new_secret()
 {
    let dir = TestDir::new();
    let moto = Moto::start(&dir);
    let sources = key_source(dir.path(), &moto, "aws", "reader", "");
    let control = dir.path().join("control");
    std::fs::write(&control, "# initial\n").unwrap();
    let cache = format!(
        "negative_ttl_secs = 3600\n[control]\nfile = \"{}\"\n",
        control.display()
    );
    let agent = Agent::start(&dir, &config(&cache, &sources));
    assert!(wait_until(Duration::from_secs(10), || agent
        .log_text()
        .contains("watching control file")));
    moto.start_recording();

    for _ in 0..50 {
        let resp = agent.secret("aws/app/not-yet");
        assert_eq!(
            (resp.status, resp.error_code().as_str()),
            (404, "not_found"),
            "{}",
            resp.text()
        );
    }
    assert_eq!(
        moto.calls_for(GET, "app/not-yet"),
        1,
        "one call per negative TTL"
    );
    assert_eq!(agent.metric("credagent_cache_negative_hits_total "), 49.0);
    // Every read is audited as a 404, the remembered ones as such.
    let audited = agent.audit_reads("aws/app/not-yet");
    assert_eq!(audited.len(), 50);
    assert_eq!(
        (&audited[0]["cache"], &audited[0]["status"]),
        (&"miss".into(), &404.into())
    );
    for line in &audited[1..] {
        assert_eq!(
            (&line["cache"], &line["status"]),
            (&"negative".into(), &404.into())
        );
        assert_eq!(line["decision"], "allow");
    }

    // Created now: hidden within the negative TTL, served once a flush drops the absence.
    moto.create_secret("app/not-yet", "created-later");
    assert_eq!(agent.secret("aws/app/not-yet").status, 404);
    let flush = agent.request(
        "POST",
        "/v1/cache/flush",
        &[],
        br#"{"pattern":"aws/app/*"}"#,
    );
    assert_eq!(flush.status, 200, "{}", flush.text());
    let resp = agent.secret("aws/app/not-yet");
    assert_eq!((resp.status, resp.text().as_str()), (200, "created-later"));
    assert_eq!(moto.calls_for(GET, "app/not-yet"), 2);

    // The control file's flush and a SIGHUP reload drop remembered absences too.
    for (name, flush) in [("app/via-control", "control"), ("app/via-reload", "reload")] {
        let path = format!("aws/{name}");
        assert_eq!(agent.secret(&path).status, 404);
        moto.create_secret(name, "created-later");
        assert_eq!(agent.secret(&path).status, 404, "{flush}: remembered");
        if flush == "control" {
            std::fs::write(&control, format!("flush {path}\n")).unwrap();
        } else {
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(agent.pid() as i32),
                nix::sys::signal::Signal::SIGHUP,
            )
            .unwrap();
        }
        assert!(
            wait_until(Duration::from_secs(10), || agent.secret(&path).status
                == 200),
            "{flush} did not drop the absence"
        );
    }
}

#[test]
fn a_secret_created_after_a_not_found_is_served_within_the_negative_ttl_of_two_seconds() {
    let dir = TestDir::new();
    let moto = Moto::start(&dir);
    let sources = key_source(dir.path(), &moto, "aws", "reader", "");
    let agent = Agent::start(&dir, &config("negative_ttl_secs = 2", &sources));
    moto.start_recording();
    let first_404 = Instant::now();
    assert_eq!(agent.secret("aws/app/late").status, 404);
    moto.create_secret("app/late", "late-value");
    // Polled every 50 ms: served at the latest 2 s after the 404 (plus the poll and load).
    assert!(
        wait_until(Duration::from_secs(15), || {
            agent.secret("aws/app/late").status == 200
        }),
        "the created secret was never served"
    );
    let waited = first_404.elapsed();
    assert_eq!(agent.secret("aws/app/late").text(), "late-value");
    // The polling reached the backend at most once per negative TTL (and once for the value).
    let calls = moto.calls_for(GET, "app/late");
    let bound = usize::try_from(waited.as_secs() / 2).unwrap() + 2;
    assert!(
        (2..=bound).contains(&calls),
        "{calls} calls in {waited:?}, bound {bound}"
    );
}

#[test]
fn a_burst_of_thirty_distinct_misses_puts_at_most_two_calls_in_flight_and_the_overflow_is_source_busy()
 {
    const LIMIT: usize = 2;
    const BURST: usize = 30;
    let dir = TestDir::new();
    let moto = Moto::start(&dir);
    moto.create_secrets("burst/", BURST);
    // Each call to moto takes 800 ms: 2 run, 8 queue (4 per allowed fetch), 20 are refused.
    let proxy = DelayProxy::start(moto.port, Duration::from_millis(800));
    // One uid may hold every slot and queue place here: this test is about the source-wide bound
    // (the per-uid share is tests/fairness.rs's), and each miss is its own call (batched reads
    // are tests/aws_batch.rs's).
    let extra = format!(
        "max_concurrent_fetches = {LIMIT}\nmax_fetches_per_uid = {}\nfetch_timeout_secs = 30\nbatch_window_ms = 0\n",
        LIMIT * 5
    );
    let sources =
        key_source(dir.path(), &moto, "aws", "reader", &extra).replace(&moto.url, &proxy.url);
    let agent = Agent::start(&dir, &config("", &sources));
    proxy.reset();

    let results: Vec<(usize, u16, String)> = std::thread::scope(|s| {
        let tasks: Vec<_> = (0..BURST)
            .map(|i| {
                let agent = &agent;
                s.spawn(move || {
                    let resp = agent.secret(&format!("aws/burst/{i}"));
                    let code = if resp.status == 200 {
                        String::new()
                    } else {
                        resp.error_code()
                    };
                    (i, resp.status, code)
                })
            })
            .collect();
        tasks.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let busy: Vec<usize> = results
        .iter()
        .filter(|(_, status, code)| (*status, code.as_str()) == (503, "source_busy"))
        .map(|(i, _, _)| *i)
        .collect();
    for (i, status, code) in &results {
        assert!(
            *status == 200 || (*status, code.as_str()) == (503, "source_busy"),
            "burst/{i}: {status} {code}"
        );
    }
    assert!(
        busy.len() >= BURST - LIMIT * 5,
        "only {} of {BURST} refused: {results:?}",
        busy.len()
    );
    assert!(busy.len() < BURST, "nothing was served");
    // The backend never saw more than the limit at once, and did see the limit (the burst
    // really overlapped).
    assert_eq!(proxy.max_in_flight(), LIMIT, "calls in flight at once");
    assert_eq!(
        proxy.requests(),
        BURST - busy.len(),
        "one call per served miss"
    );

    // Afterwards every secret is served, refused ones included (sequentially: no burst).
    for i in 0..BURST {
        let resp = agent.secret(&format!("aws/burst/{i}"));
        assert_eq!(
            (resp.status, resp.text()),
            (200, format!("burst/{i}")),
            "burst/{i} after the burst"
        );
    }
    assert!(proxy.max_in_flight() <= LIMIT);
    assert!(agent.metric("credagent_requests_total{status=\"503\"} ") >= busy.len() as f64);
}
