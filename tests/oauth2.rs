//! The oauth2 source against a real OAuth2 server (oidc-provider on loopback), counting token
//! requests on the server's side: client_credentials tokens served with the profile's scope and
//! audience, one token request for 50 concurrent callers, a new token (and exactly one request)
//! once the old one is due, the refresh_token grant following the server's rotation through two
//! refreshes, a refused client reported by its OAuth2 code with neither the server's body nor
//! the secret in a reply or log, `expires_at` in JSON replies, and the ACL.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::config_allowing_all as agent_config;
use common::oauth::{CC_CLIENT, CC_SECRET, OidcServer, RT_CLIENT, RT_SECRET};
use common::{Agent, CANARY, TestDir, request_as};

/// A file source `files` holding the credentials, and an oauth2 source `idp` with `settings`.
fn sources(server: &OidcServer, settings: &str) -> String {
    format!(
        r#"[sources.files]
type = "file"
dir = "{{secrets}}"

[sources.idp]
type = "oauth2"
token_url = "{url}"
{settings}

[sources.idp.tokens.api]
scope = "api:read"
audience = "https://api.example"

[sources.idp.tokens.all]
scope = "api:read api:write"
"#,
        url = server.token_url()
    )
}

fn client_credentials(server: &OidcServer, dir: &TestDir, skew: u64) -> String {
    dir.secret("cc-secret", format!("{CC_SECRET}\n").as_bytes());
    sources(
        server,
        &format!(
            "client_id = \"{CC_CLIENT}\"\nclient_secret = \"files/cc-secret\"\ngrant = \"client_credentials\"\nrefresh_skew_secs = {skew}"
        ),
    )
}

/// Seconds since the epoch of an RFC 3339 UTC timestamp (`2026-11-22T20:54:09.123Z`).
fn epoch_secs(text: &str) -> i64 {
    let (date, time) = text.split_once('T').unwrap();
    let d: Vec<i64> = date.split('-').map(|p| p.parse().unwrap()).collect();
    let t: Vec<f64> = time
        .trim_end_matches('Z')
        .split(':')
        .map(|p| p.parse().unwrap())
        .collect();
    // Days from civil (H. Hinnant).
    let (y, m) = if d[1] <= 2 {
        (d[0] - 1, d[1] + 9)
    } else {
        (d[0], d[1] - 3)
    };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d[2] - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    days * 86_400 + (t[0] as i64) * 3600 + (t[1] as i64) * 60 + t[2] as i64
}

#[test]
fn client_credentials_tokens_are_served_per_profile_with_expires_at_and_acl() {
    let dir = TestDir::new();
    let server = OidcServer::start(dir.path(), 600);
    // A second client whose secret is not where the config says.
    let missing_secret = format!(
        "[sources.idp-broken]\ntype = \"oauth2\"\ntoken_url = \"{}\"\nclient_id = \"{CC_CLIENT}\"\nclient_secret = \"files/no-such-secret\"\ngrant = \"client_credentials\"\n[sources.idp-broken.tokens.api]\n",
        server.token_url()
    );
    let agent = Agent::start(
        &dir,
        &agent_config(
            "",
            &format!("{}{missing_secret}", client_credentials(&server, &dir, 60)),
        ),
    );

    let api = agent.secret("idp/api");
    assert_eq!(api.status, 200, "{}", api.text());
    let token = api.text();
    assert!(token.len() >= 20, "{token}");
    assert_eq!(
        agent.secret("idp/api").text(),
        token,
        "served from the cache"
    );
    let all = agent.secret("idp/all");
    assert_eq!(all.status, 200, "{}", all.text());
    assert_ne!(all.text(), token, "each profile has its own token");

    // The server saw one request per profile, with the profile's scope and audience.
    let counts = server.counts();
    assert_eq!(counts["success"], 2, "{counts}");
    let requests = counts["requests"].as_array().unwrap();
    assert_eq!(requests[0]["grant_type"], "client_credentials");
    assert_eq!(requests[0]["client_id"], CC_CLIENT);
    assert_eq!(requests[0]["scope"], "api:read");
    assert_eq!(requests[0]["audience"], "https://api.example");
    assert_eq!(requests[1]["scope"], "api:read api:write");
    assert!(requests[1]["audience"].is_null());

    // JSON adds expires_at: the token's lifetime (600 s) from when it was requested.
    let json = agent
        .request(
            "GET",
            "/v1/secrets/idp/api",
            &[("Accept", "application/json")],
            b"",
        )
        .json();
    assert_eq!(json["value"], token.as_str());
    let expires_at = epoch_secs(json["expires_at"].as_str().unwrap());
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(
        (now + 590..=now + 600).contains(&expires_at),
        "expires_at {json} vs now {now}"
    );
    // Other sources' JSON has no expires_at.
    dir.secret("plain", b"v");
    assert!(
        agent
            .request(
                "GET",
                "/v1/secrets/files/plain",
                &[("Accept", "application/json")],
                b""
            )
            .json()
            .get("expires_at")
            .is_none()
    );

    // A client secret that does not exist is the agent's failure, and nothing is sent.
    let broken = agent.secret("idp-broken/api");
    assert_eq!(
        (broken.status, broken.error_code().as_str()),
        (502, "upstream_denied"),
        "{}",
        broken.text()
    );
    // An unknown profile is 404 and asks the server nothing.
    let missing = agent.secret("idp/nope");
    assert_eq!(
        (missing.status, missing.error_code().as_str()),
        (404, "not_found")
    );
    // A uid outside the rule is denied, and the server is not asked.
    let denied = request_as(65534, &agent.socket, "GET", "/v1/secrets/idp/api");
    assert_eq!(
        (denied.status, denied.error_code().as_str()),
        (403, "forbidden")
    );
    assert!(!denied.text().contains(&token));
    assert_eq!(server.successes(), 2);
    assert!(
        !agent.log_text().contains(&token),
        "a token reached the log"
    );
}

#[test]
fn fifty_concurrent_callers_cause_exactly_one_token_request() {
    let dir = TestDir::new();
    let server = OidcServer::start(dir.path(), 600);
    let agent = Agent::start(
        &dir,
        // 50 connections of root, an operator: past the operators' 16 connection slots.
        &agent_config("", &client_credentials(&server, &dir, 60)).replace(
            "socket_mode = \"0666\"\n",
            "socket_mode = \"0666\"\nmax_operator_connections = 64\n",
        ),
    );
    let socket = agent.socket.clone();
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(50));
    let callers: Vec<_> = (0..50)
        .map(|_| {
            let (socket, barrier) = (socket.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                common::try_request(&socket, "GET", "/v1/secrets/idp/api", &[], b"").unwrap()
            })
        })
        .collect();
    let tokens: Vec<_> = callers
        .into_iter()
        .map(|c| {
            let resp = c.join().unwrap();
            assert_eq!(resp.status, 200, "{}", resp.text());
            resp.text()
        })
        .collect();
    assert!(tokens.iter().all(|t| *t == tokens[0]), "one token for all");
    assert_eq!(server.successes(), 1, "{}", server.counts());
    assert_eq!(server.errors(), 0);
}

#[test]
fn a_token_is_replaced_after_expires_in_minus_skew_with_one_request_within_3_s() {
    let dir = TestDir::new();
    // Tokens live 3 s; with a skew of 1 s the agent holds one for 2 s.
    let server = OidcServer::start(dir.path(), 3);
    let agent = Agent::start(
        &dir,
        &agent_config("jitter_percent = 0", &client_credentials(&server, &dir, 1)),
    );
    let first = agent.secret("idp/api").text();
    assert_eq!(agent.secret("idp/api").text(), first);
    assert_eq!(server.successes(), 1);
    std::thread::sleep(Duration::from_millis(2300));
    let second = agent.secret("idp/api");
    assert_eq!(second.status, 200, "{}", second.text());
    assert_ne!(second.text(), first, "a new token after expires_in - skew");
    assert_eq!(agent.secret("idp/api").text(), second.text());
    assert_eq!(server.successes(), 2, "exactly one more token request");
}

/// `idp` with the refresh_token grant (skew 1 s), starting from the server's minted token.
fn refresh_token_config(server: &OidcServer, dir: &TestDir) -> String {
    dir.secret("rt-secret", RT_SECRET.as_bytes());
    dir.secret(
        "refresh-token",
        format!("{}\n", server.refresh_token).as_bytes(),
    );
    let config = sources(
        server,
        &format!(
            "client_id = \"{RT_CLIENT}\"\nclient_secret = \"files/rt-secret\"\ngrant = \"refresh_token\"\nrefresh_token = \"files/refresh-token\"\nrefresh_skew_secs = 1"
        ),
    )
    .replace("scope = \"api:read\"\naudience = \"https://api.example\"\n", "");
    agent_config("jitter_percent = 0", &config)
}

#[test]
fn a_reload_keeps_the_rotated_refresh_token_instead_of_the_spent_configured_one() {
    let dir = TestDir::new();
    let server = OidcServer::start(dir.path(), 600);
    let agent = Agent::start(&dir, &refresh_token_config(&server, &dir));
    let first = agent.secret("idp/api");
    assert_eq!(first.status, 200, "{}", first.text());
    // The reload flushes the cache, so the next read asks for a token at once: with the
    // refresh token the server rotated in, not the configured one it already spent.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent.pid() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    assert!(common::wait_until(Duration::from_secs(10), || {
        agent.log_text().contains("configuration reloaded")
    }));
    let second = agent.secret("idp/api");
    assert_eq!(
        second.status,
        200,
        "{}; server: {}",
        second.text(),
        server.counts()
    );
    assert_ne!(second.text(), first.text());
    assert_eq!((server.successes(), server.errors()), (2, 0));
}

#[test]
fn refresh_token_grant_follows_the_rotation_through_two_refreshes() {
    let dir = TestDir::new();
    let server = OidcServer::start(dir.path(), 2);
    let initial = server.refresh_token.clone();
    let agent = Agent::start(&dir, &refresh_token_config(&server, &dir));

    // Each token lives 2 s and is held 1 s: three reads 1.5 s apart spend three refresh tokens,
    // the configured one and then each one the server rotated in.
    let mut tokens = Vec::new();
    for round in 0..3 {
        if round > 0 {
            std::thread::sleep(Duration::from_millis(1500));
        }
        let resp = agent.secret("idp/api");
        assert_eq!(
            resp.status,
            200,
            "round {round}: {}; server: {}",
            resp.text(),
            server.counts()
        );
        tokens.push(resp.text());
    }
    assert_ne!(tokens[0], tokens[1]);
    assert_ne!(tokens[1], tokens[2]);
    let counts = server.counts();
    assert_eq!(
        (counts["success"].as_u64(), counts["error"].as_u64()),
        (Some(3), Some(0)),
        "{counts}"
    );
    assert!(
        counts["requests"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["grant_type"] == "refresh_token" && r["client_id"] == RT_CLIENT)
    );
    // The configured refresh token was spent: the server refuses it now (so the agent did use
    // the rotated ones for the second and third token).
    let (status, body) = server.token_request(
        RT_CLIENT,
        RT_SECRET,
        &format!("grant_type=refresh_token&refresh_token={initial}"),
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("invalid_grant"), "{body}");
    let log = agent.log_text();
    assert!(!log.contains(&initial), "a refresh token reached the log");
    assert!(tokens.iter().all(|t| !log.contains(t.as_str())));
}

#[test]
fn a_wrong_client_secret_is_reported_as_invalid_client_without_the_servers_body_or_the_secret() {
    let dir = TestDir::new();
    let server = OidcServer::start(dir.path(), 600);
    let secret_file = dir.path().join("client-secret");
    std::fs::write(&secret_file, CANARY).unwrap();
    std::fs::set_permissions(&secret_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let config = sources(
        &server,
        &format!(
            "client_id = \"{CC_CLIENT}\"\nclient_secret_file = \"{}\"\ngrant = \"client_credentials\"",
            secret_file.display()
        ),
    );
    let agent = Agent::start(&dir, &agent_config("", &config));

    for _ in 0..2 {
        let resp = agent.secret("idp/api");
        assert_eq!(resp.status, 502, "{}", resp.text());
        let json = resp.json();
        assert_eq!(json["error"]["code"], "token_refused", "{json}");
        assert_eq!(json["error"]["oauth2_error"], "invalid_client", "{json}");
        assert!(!resp.text().contains(CANARY));
        assert!(!resp.text().contains("client authentication failed"));
    }
    // Refusals are not cached: each read asked again.
    assert_eq!((server.successes(), server.errors()), (0, 2));
    let log = agent.log_text();
    assert!(log.contains("invalid_client"), "{log}");
    assert!(
        !log.contains("client authentication failed"),
        "the server's error_description reached the log:\n{log}"
    );
    // The canary (the secret sent) is checked by Agent's drop too.
    assert!(!log.contains(CANARY));
}
