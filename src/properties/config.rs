//! Config: any TOML-ish text is accepted or refused with an error, never a panic (huge numbers,
//! negative numbers, wrong types, half tables), and every config generated within the documented
//! ranges builds into exactly the values written.

use std::path::Path;
use std::time::Duration;

use proptest::prelude::*;

use super::{hostile_text, source_name};
use crate::config::{ConfigError, SourceKind, parse};

const FRAGMENTS: &[&str] = &[
    "[server]\n",
    "socket = \"/tmp/credagent-prop/agent.sock\"\n",
    "socket_mode = \"0777\"\n",
    "socket_mode = \"9\"\n",
    "max_connections = ",
    "max_connections_per_uid = ",
    "write_timeout_secs = ",
    "shutdown_timeout_secs = ",
    "creds_socket = \"rel\"\n",
    "[cache]\n",
    "ttl_secs = ",
    "max_entries = ",
    "refresh_ahead_secs = ",
    "stale_if_error_secs = ",
    "lock_memory = \"best-effort\"\n",
    "max_locked_bytes = ",
    "[control]\n",
    "file = \"\"\n",
    "[audit]\n",
    "file = \"-\"\n",
    "[sources.f]\n",
    "[sources.F]\n",
    "type = \"file\"\n",
    "type = \"env\"\n",
    "type = \"vault\"\n",
    "type = \"aws-secretsmanager\"\n",
    "dir = \"/\"\n",
    "prefix = \"AWS_\"\n",
    "prefix = \"APP_\"\n",
    "max_concurrent_fetches = ",
    "[[allow]]\n",
    "secrets = [\"f/*\", \"nope/x\", \"\"]\n",
    "peer = { uid = 0, user = \"root\" }\n",
    "admin = true\n",
    "[credentials]\n",
    "x = \"f/a\"\n",
    "\"../x\" = \"f/a\"\n",
    "18446744073709551615\n",
    "18446744073709551616\n",
    "-1\n",
    "0\n",
    "1\n",
    "1e400\n",
    "\"str\"\n",
    "[]\n",
    "{}\n",
    "=",
    "\"",
    "\n",
    "[",
    "]",
    "\\u0000",
    "#",
];

/// One generated, valid `[sources.NAME]` table.
#[derive(Debug, Clone)]
enum GenSource {
    File {
        ttl: Option<u64>,
        fetches: Option<usize>,
    },
    Env {
        prefix: String,
    },
}

/// A TTL longer than the refresh-ahead window, often just longer (the boundary the config checks).
fn ttl_above(window: u64) -> impl Strategy<Value = u64> {
    prop_oneof![window + 1..=window + 2, window + 1..=604_800u64]
}

/// A file source's TTL, when written, must exceed the cache's refresh-ahead window.
fn gen_source(refresh_ahead: u64) -> impl Strategy<Value = GenSource> {
    prop_oneof![
        (
            prop::option::of(ttl_above(refresh_ahead)),
            prop::option::of(1..=1024usize)
        )
            .prop_map(|(ttl, fetches)| GenSource::File { ttl, fetches }),
        "APP_[A-Z0-9_]{0,8}".prop_map(|prefix| GenSource::Env { prefix }),
    ]
}

proptest! {
    #[test]
    fn any_text_is_refused_or_accepted_never_a_panic(text in hostile_text(FRAGMENTS)) {
        match parse(&text, Path::new("/nonexistent/credagent.toml")) {
            Ok(_) | Err(ConfigError::Parse { .. } | ConfigError::Invalid { .. }) => {}
            Err(other) => return Err(TestCaseError::fail(format!("unexpected {other:?}"))),
        }
    }

    #[test]
    fn generated_valid_configs_build_to_what_was_written(
        mode in 0..=0o777u32,
        (max_connections, per_uid) in (1..=65_536usize).prop_flat_map(|m| (Just(m), prop::option::of(1..=m))),
        write_timeout in 1..=3600u64,
        // Every TTL must exceed the refresh-ahead window (written, or the default 60 s).
        (refresh_ahead, ttl, sources) in prop::option::of(0..=3600u64).prop_flat_map(|written| {
            let window = written.unwrap_or(60);
            (
                Just(written),
                ttl_above(window),
                prop::collection::btree_map(source_name(), gen_source(window), 1..4),
            )
        }),
        max_entries in 1..=1_000_000usize,
        stale in 0..=604_800u64,
        locked_mib in 1..=4096u64,
        uids in prop::collection::vec(any::<u32>(), 0..4),
    ) {
        let dir = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut text = format!(
            "[server]\nsocket = {:?}\nsocket_mode = \"{mode:04o}\"\nmax_connections = {max_connections}\n\
             write_timeout_secs = {write_timeout}\n",
            dir.path().join("agent.sock")
        );
        if let Some(n) = per_uid {
            text.push_str(&format!("max_connections_per_uid = {n}\n"));
        }
        text.push_str(&format!(
            "[cache]\nttl_secs = {ttl}\nmax_entries = {max_entries}\nstale_if_error_secs = {stale}\n\
             lock_memory = \"best-effort\"\nmax_locked_bytes = {}\n",
            locked_mib << 20
        ));
        if let Some(r) = refresh_ahead {
            text.push_str(&format!("refresh_ahead_secs = {r}\n"));
        }
        for (name, source) in &sources {
            text.push_str(&format!("[sources.{name}]\n"));
            match source {
                GenSource::File { ttl, fetches } => {
                    text.push_str(&format!("type = \"file\"\ndir = {:?}\n", dir.path()));
                    if let Some(t) = ttl {
                        text.push_str(&format!("ttl_secs = {t}\n"));
                    }
                    if let Some(f) = fetches {
                        text.push_str(&format!("max_concurrent_fetches = {f}\n"));
                    }
                }
                GenSource::Env { prefix } => text.push_str(&format!("type = \"env\"\nprefix = {prefix:?}\n")),
            }
        }
        for (uid, name) in uids.iter().zip(sources.keys().cycle()) {
            text.push_str(&format!("[[allow]]\npeer = {{ uid = {uid} }}\nsecrets = [\"{name}/*\"]\n"));
        }
        let config = parse(&text, &dir.path().join("config.toml"))
            .map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        prop_assert_eq!(config.server.socket_mode, mode);
        prop_assert_eq!(config.server.max_connections.get(), max_connections);
        let want_per_uid = per_uid.unwrap_or((max_connections / 4).max(1));
        prop_assert_eq!(config.server.max_connections_per_uid.get(), want_per_uid);
        prop_assert_eq!(config.server.write_timeout, Duration::from_secs(write_timeout));
        prop_assert_eq!(config.cache.ttl, Duration::from_secs(ttl));
        prop_assert_eq!(config.cache.refresh_ahead, Duration::from_secs(refresh_ahead.unwrap_or(60)));
        prop_assert_eq!(config.cache.max_entries.get(), max_entries);
        prop_assert_eq!(config.cache.stale_if_error, Duration::from_secs(stale));
        prop_assert_eq!(config.cache.max_locked_bytes as u64, locked_mib << 20);
        prop_assert_eq!(config.sources.len(), sources.len());
        for (name, source) in &sources {
            let built = &config.sources[name];
            match source {
                GenSource::File { ttl: t, fetches } => {
                    let is_file = matches!(built.kind, SourceKind::File { .. });
                    prop_assert!(is_file);
                    prop_assert_eq!(built.ttl, Duration::from_secs(t.unwrap_or(ttl)));
                    prop_assert_eq!(built.max_concurrent_fetches.get(), fetches.unwrap_or(8));
                }
                GenSource::Env { prefix } => {
                    let same = matches!(&built.kind, SourceKind::Env { prefix: p } if p == prefix);
                    prop_assert!(same);
                }
            }
        }
        prop_assert_eq!(config.rules.len(), uids.len());
        for (rule, uid) in config.rules.iter().zip(&uids) {
            prop_assert_eq!(rule.peer.uid, Some(*uid));
        }
    }
}
