//! Batched reads of the Secrets Manager and Parameter Store sources against a real moto server
//! with signature and IAM checking on, counted with moto's recorder (counts, never timings):
//! `[prefetch]` and concurrent distinct misses go as `BatchGetSecretValue` / `GetParameters`
//! calls, every id keeps its own answer (value, 404), version / stage / label reads and binary
//! values still work, a source without the batch permission reads one by one, `batch_window_ms = 0`
//! turns batching off, and a uid's fetch share still bounds its misses.
//!
//! moto 5.2.5 checks Secrets Manager calls against `Resource "*"` only: a per-secret `Deny` is
//! not enforced (for `GetSecretValue` neither), and `BatchGetSecretValue` needs no per-secret
//! `GetSecretValue` there. A per-id denial in a batch reply is therefore tested on the reply's
//! mapping (`secretsmanager.rs`'s unit tests), not here; docs/aws.md says so.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Barrier;
use std::time::Duration;

use common::moto::{Moto, key_source};
use common::{Agent, TestDir, config_allowing_all as config, wait_until};

const GET: &str = "secretsmanager.GetSecretValue";
const BATCH: &str = "secretsmanager.BatchGetSecretValue";
const SSM_GET: &str = "AmazonSSM.GetParameter";
const SSM_BATCH: &str = "AmazonSSM.GetParameters";

/// `[prefetch]` of `names` (a `[cache]`-section tail: config_allowing_all puts it after `[cache]`).
fn prefetch(names: &[String]) -> String {
    let list: Vec<String> = names.iter().map(|n| format!("{n:?}")).collect();
    format!("\n[prefetch]\nsecrets = [{}]\n", list.join(", "))
}

fn wait_ready(agent: &Agent) {
    assert!(
        wait_until(Duration::from_secs(60), || agent.get("/v1/ready").status
            == 200),
        "not ready: {}\n{}",
        agent.get("/v1/ready").text(),
        agent.log_text()
    );
}

/// Reads every path at once (threads released together); `(status, body or error code)` each.
fn read_all(agent: &Agent, paths: &[String]) -> Vec<(u16, String)> {
    let barrier = Barrier::new(paths.len());
    std::thread::scope(|s| {
        let tasks: Vec<_> = paths
            .iter()
            .map(|path| {
                let (agent, barrier) = (agent, &barrier);
                s.spawn(move || {
                    barrier.wait();
                    let resp = agent.get(path);
                    let text = if resp.status == 200 {
                        resp.text()
                    } else {
                        resp.error_code()
                    };
                    (resp.status, text)
                })
            })
            .collect();
        tasks.into_iter().map(|t| t.join().unwrap()).collect()
    })
}

/// How many ids starting with `prefix` each recorded call named (for failure messages).
fn call_sizes(moto: &Moto, prefix: &str) -> Vec<usize> {
    moto.recording()
        .iter()
        .map(|r| common::moto::body(r).matches(prefix).count())
        .filter(|&n| n > 0)
        .collect()
}

/// The agent's `credagent_backend_calls_total` for `source` and `call`.
fn calls_metric(agent: &Agent, source: &str, call: &str) -> u64 {
    let text = agent.get("/v1/metrics").text();
    let key = format!("credagent_backend_calls_total{{source=\"{source}\",call=\"{call}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&key))
        .unwrap_or_else(|| panic!("no {key} in\n{text}"))
        .parse()
        .unwrap()
}

#[test]
fn a_prefetch_of_100_secrets_makes_at_most_5_batch_calls_and_no_single_read() {
    let dir = TestDir::new();
    let moto = Moto::start(&dir);
    moto.create_secrets("pre/", 100);
    let names: Vec<String> = (0..100).map(|i| format!("aws/pre/{i}")).collect();
    let sources = key_source(dir.path(), &moto, "aws", "batcher", "");
    moto.start_recording();
    let agent = Agent::start(&dir, &config(&prefetch(&names), &sources));
    wait_ready(&agent);
    let batches = moto.calls(BATCH);
    assert!((1..=5).contains(&batches), "{batches} batch calls");
    assert_eq!(moto.calls(GET), 0, "single reads");
    // Each id got its own value, and reading them now is a cache hit (no call).
    for i in [0, 37, 99] {
        let resp = agent.secret(&format!("aws/pre/{i}"));
        assert_eq!((resp.status, resp.text()), (200, format!("pre/{i}")));
    }
    assert_eq!(moto.calls(BATCH) + moto.calls(GET), batches);
    // The metric counts the same calls.
    assert_eq!(
        calls_metric(&agent, "aws", "BatchGetSecretValue"),
        batches as u64
    );
    assert_eq!(calls_metric(&agent, "aws", "GetSecretValue"), 0);
}

#[test]
fn a_hundred_concurrent_distinct_misses_make_at_most_10_calls_and_each_id_keeps_its_answer() {
    let dir = TestDir::new();
    let moto = Moto::start(&dir);
    moto.create_secrets("many/", 98);
    moto.create_secret("many/deleted", "gone");
    moto.delete_secret("many/deleted");
    // A batch holds at most as many ids as the callers have fetch slots. The window is the
    // longest allowed: the test counts packing, and a debug build on a busy machine can leave
    // more than the default 5 ms between two requests.
    let extra = "max_concurrent_fetches = 100\nmax_fetches_per_uid = 100\nbatch_window_ms = 100\n";
    let sources = format!(
        "{}{}",
        key_source(dir.path(), &moto, "aws", "batcher", extra),
        key_source(
            dir.path(),
            &moto,
            "aws-single",
            "batcher",
            "batch_window_ms = 0\n"
        )
    );
    // 100 connections of root, an operator: past the operators' 16 connection slots.
    let agent = Agent::start(
        &dir,
        &config("", &sources).replace(
            "socket_mode = \"0666\"\n",
            "socket_mode = \"0666\"\nmax_operator_connections = 128\n",
        ),
    );
    let mut ids: Vec<String> = (0..98).map(|i| format!("many/{i}")).collect();
    ids.push("many/missing".into());
    ids.push("many/deleted".into());
    let paths: Vec<String> = ids
        .iter()
        .map(|id| format!("/v1/secrets/aws/{id}"))
        .collect();
    moto.start_recording();
    let results = read_all(&agent, &paths);
    let calls = moto.calls(BATCH) + moto.calls(GET);
    assert!(
        calls <= 10,
        "{calls} calls for 100 misses: {:?}",
        call_sizes(&moto, "many/")
    );
    for (i, result) in results.iter().take(98).enumerate() {
        assert_eq!(result, &(200, format!("many/{i}")));
    }
    // The missing and the deleted id answer as an unbatched read of them does.
    let single = |id: &str| {
        let resp = agent.secret(&format!("aws-single/{id}"));
        (resp.status, resp.error_code())
    };
    assert_eq!(results[98], (404, "not_found".into()));
    assert_eq!(results[98], single("many/missing"));
    assert_eq!(results[99], single("many/deleted"));
}

#[test]
fn stage_version_and_binary_reads_still_work_beside_a_batch() {
    let dir = TestDir::new();
    let moto = Moto::start(&dir);
    let v2 = moto.put_value("staged", "staged-v2");
    let sources = key_source(dir.path(), &moto, "aws", "batcher", "");
    let agent = Agent::start(&dir, &config("", &sources));
    moto.start_recording();
    let paths = [
        "/v1/secrets/aws/bin/blob".to_owned(),
        "/v1/secrets/aws/canary".to_owned(),
        "/v1/secrets/aws/staged?version_stage=AWSPREVIOUS".to_owned(),
        format!("/v1/secrets/aws/staged?version_id={v2}"),
    ];
    let results = read_all(&agent, &paths);
    assert_eq!(results[1], (200, common::CANARY.to_owned()));
    assert_eq!(results[2], (200, "staged-v1".to_owned()));
    assert_eq!(results[3], (200, "staged-v2".to_owned()));
    // The binary value, byte for byte (read again: now a cache hit of the batched fetch).
    let binary = agent.secret("aws/bin/blob");
    assert_eq!(binary.body, [0u8, 159, 146, 150, 255, 10]);
    assert_eq!(results[0].0, 200);
    // The stage and version reads went alone; the plain ones together or alone, never both.
    assert_eq!(moto.calls_for(GET, "staged"), 2);
    assert_eq!(moto.calls_for(GET, "bin/blob"), 1 - moto.calls(BATCH));
}

#[test]
fn a_source_without_the_batch_permission_reads_one_by_one_and_serves_every_id() {
    let dir = TestDir::new();
    let moto = Moto::start(&dir);
    moto.create_secrets("nobatch/", 20);
    let names: Vec<String> = (0..20).map(|i| format!("aws/nobatch/{i}")).collect();
    // User reader may GetSecretValue, not BatchGetSecretValue.
    let sources = key_source(dir.path(), &moto, "aws", "reader", "");
    moto.start_recording();
    let agent = Agent::start(&dir, &config(&prefetch(&names), &sources));
    wait_ready(&agent);
    // One denied batch call, then one read per id.
    assert_eq!(moto.calls(BATCH), 1);
    assert_eq!(moto.calls(GET), 20);
    assert!(
        agent.log_text().contains("batch call denied"),
        "{}",
        agent.log_text()
    );
    for i in [0, 19] {
        let resp = agent.secret(&format!("aws/nobatch/{i}"));
        assert_eq!((resp.status, resp.text()), (200, format!("nobatch/{i}")));
    }
    // Batching stays paused: concurrent misses go one by one, no second batch call.
    let paths = ["app/db", "canary", "staged"].map(|id| format!("/v1/secrets/aws/{id}"));
    assert!(read_all(&agent, &paths).iter().all(|(s, _)| *s == 200));
    assert_eq!(moto.calls(BATCH), 1);
}

#[test]
fn a_zero_batch_window_prefetches_and_reads_one_by_one() {
    let dir = TestDir::new();
    let moto = Moto::start(&dir);
    moto.create_secrets("off/", 10);
    let names: Vec<String> = (0..10).map(|i| format!("aws/off/{i}")).collect();
    let sources = key_source(dir.path(), &moto, "aws", "batcher", "batch_window_ms = 0\n");
    moto.start_recording();
    let agent = Agent::start(&dir, &config(&prefetch(&names), &sources));
    wait_ready(&agent);
    assert_eq!((moto.calls(BATCH), moto.calls(GET)), (0, 10));
}

#[test]
fn a_batch_does_not_let_one_uid_past_its_fetch_share() {
    let dir = TestDir::new();
    let moto = Moto::start(&dir);
    moto.create_secrets("share/", 30);
    // The moto calls take their time, so the 30 misses overlap; the uid may have 5 in flight.
    let proxy = common::delay_proxy::DelayProxy::start(moto.port, Duration::from_millis(500));
    let extra = "max_concurrent_fetches = 100\nmax_fetches_per_uid = 5\nfetch_timeout_secs = 30\n";
    let sources =
        key_source(dir.path(), &moto, "aws", "batcher", extra).replace(&moto.url, &proxy.url);
    let agent = Agent::start(&dir, &config("", &sources));
    let paths: Vec<String> = (0..30)
        .map(|i| format!("/v1/secrets/aws/share/{i}"))
        .collect();
    let results = read_all(&agent, &paths);
    let served = results.iter().filter(|(s, _)| *s == 200).count();
    let refused = results
        .iter()
        .filter(|r| **r == (503, "source_busy".to_owned()))
        .count();
    assert_eq!(served + refused, 30, "{results:?}");
    assert!(
        served <= 5,
        "{served} served past a share of 5: {results:?}"
    );
    assert!(served >= 1, "{results:?}");
}

#[test]
fn ssm_prefetch_of_100_parameters_makes_at_most_10_get_parameters_calls() {
    let dir = TestDir::new();
    let moto = Moto::start(&dir);
    moto.create_params("/pre/p", 100);
    let names: Vec<String> = (0..100).map(|i| format!("ssm/pre/p{i}")).collect();
    let sources = moto.source_section(dir.path(), "ssm", "aws-ssm", "ssm_batcher", "");
    moto.start_recording();
    let agent = Agent::start(&dir, &config(&prefetch(&names), &sources));
    wait_ready(&agent);
    let batches = moto.calls(SSM_BATCH);
    assert!((1..=10).contains(&batches), "{batches} GetParameters calls");
    assert_eq!(moto.calls(SSM_GET), 0);
    let resp = agent.secret("ssm/pre/p42");
    assert_eq!((resp.status, resp.text()), (200, "/pre/p42".to_owned()));
    assert_eq!(calls_metric(&agent, "ssm", "GetParameters"), batches as u64);
}

#[test]
fn ssm_concurrent_distinct_misses_share_get_parameters_calls_and_keep_their_answers() {
    let dir = TestDir::new();
    let moto = Moto::start(&dir);
    moto.create_params("/many/p", 99);
    // As for Secrets Manager: slots for every id, the longest window.
    let extra = "max_concurrent_fetches = 100\nmax_fetches_per_uid = 100\nbatch_window_ms = 100\n";
    let sources = moto.source_section(dir.path(), "ssm", "aws-ssm", "ssm_batcher", extra);
    // 100 connections of root, an operator: past the operators' 16 connection slots.
    let agent = Agent::start(
        &dir,
        &config("", &sources).replace(
            "socket_mode = \"0666\"\n",
            "socket_mode = \"0666\"\nmax_operator_connections = 128\n",
        ),
    );
    let mut paths: Vec<String> = (0..99)
        .map(|i| format!("/v1/secrets/ssm/many/p{i}"))
        .collect();
    paths.push("/v1/secrets/ssm/many/missing".into());
    moto.start_recording();
    let results = read_all(&agent, &paths);
    let calls = moto.calls(SSM_BATCH) + moto.calls(SSM_GET);
    assert!(
        calls <= 10,
        "{calls} calls for 100 misses: {:?}",
        call_sizes(&moto, "/many/")
    );
    for (i, result) in results.iter().take(99).enumerate() {
        assert_eq!(result, &(200, format!("/many/p{i}")));
    }
    assert_eq!(results[99], (404, "not_found".to_owned()));
}

#[test]
fn ssm_version_label_and_string_list_reads_still_work_beside_a_batch() {
    let dir = TestDir::new();
    let moto = Moto::start(&dir);
    let sources = moto.source_section(dir.path(), "ssm", "aws-ssm", "ssm_batcher", "");
    let agent = Agent::start(&dir, &config("", &sources));
    moto.start_recording();
    let paths = [
        "/v1/secrets/ssm/app/db/password",
        "/v1/secrets/ssm/app/hosts",
        "/v1/secrets/ssm/app/db/password?version=1",
        "/v1/secrets/ssm/app/db/password?label=blue",
    ]
    .map(str::to_owned);
    let results = read_all(&agent, &paths);
    assert_eq!(results[0], (200, "ssm-pw-2".to_owned()));
    assert_eq!(results[1], (200, "a.internal,b.internal".to_owned()));
    assert_eq!(results[2], (200, "ssm-pw-1".to_owned()));
    assert_eq!(results[3], (200, "ssm-pw-1".to_owned()));
    // The version and label reads went alone.
    assert!(moto.calls(SSM_GET) >= 2);
}

#[test]
fn ssm_without_get_parameters_permission_reads_one_by_one() {
    let dir = TestDir::new();
    let moto = Moto::start(&dir);
    // User ssm_reader may GetParameter, not GetParameters.
    let sources = moto.source_section(dir.path(), "ssm", "aws-ssm", "ssm_reader", "");
    let names = ["ssm/app/db/password", "ssm/app/hosts"].map(str::to_owned);
    moto.start_recording();
    let agent = Agent::start(&dir, &config(&prefetch(&names), &sources));
    wait_ready(&agent);
    assert_eq!((moto.calls(SSM_BATCH), moto.calls(SSM_GET)), (1, 2));
    assert_eq!(agent.secret("ssm/app/db/password").text(), "ssm-pw-2");
    assert_eq!(
        agent.secret("ssm/app/hosts").text(),
        "a.internal,b.internal"
    );
}
