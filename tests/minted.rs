//! Minted values left alone while fresh, attack first: uid 65534, allowed one OAuth2 token (or a
//! `minted = true` command's value), sends `?refresh=true` again and again. It gets the same
//! value each time with `X-Credagent-Refresh: fresh`, the token endpoint (the command) runs once,
//! root's `render --watch` of that value rewrites nothing and runs no `--on-change`, and the
//! audit line says `"refresh":"fresh"` without the value. A command without `minted` is
//! refreshed as before (the control), and the attacker's forced refreshes neither use up nor
//! reset root's (the throttle is per secret and per uid).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use common::oauth::{CC_CLIENT, CC_SECRET, OidcServer};
use common::{Agent, ChildGuard, TestDir, config_allowing_all, request_as, wait_until};

const ATTACKER: u32 = 65534;

/// The agent's cache section: a forced refresh allowed once a second (the least), no jitter.
const CACHE: &str = "min_refresh_interval_secs = 1\njitter_percent = 0";

/// Lets the attacker read `secret`.
fn attacker_allowed(secret: &str) -> String {
    format!("[[allow]]\npeer = {{ uid = {ATTACKER} }}\nsecrets = [\"{secret}\"]\n")
}

/// Root's `render TEMPLATE -o OUT --watch --on-change 'echo run >> RUNS'` of `{{ secret NAME }}`,
/// once its first write is there: (the watcher, OUT, RUNS).
fn render_watch(agent: &Agent, dir: &TestDir, name: &str) -> (ChildGuard, PathBuf, PathBuf) {
    let template = dir.path().join("t");
    std::fs::write(&template, format!("{{{{ secret {name} }}}}")).unwrap();
    let (out, runs) = (dir.path().join("out"), dir.path().join("runs"));
    let log = std::fs::File::create(dir.path().join("watcher.log")).unwrap();
    let child: Child = common::command(common::bin())
        .arg("render")
        .arg("--socket")
        .arg(&agent.socket)
        .arg(&template)
        .arg("-o")
        .arg(&out)
        .arg("--watch")
        .arg("--on-change")
        .arg(format!("echo run >> {}", runs.display()))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let watcher = ChildGuard(child);
    assert!(
        wait_until(Duration::from_secs(10), || !read(&out).is_empty()),
        "no first write; watcher log:\n{}",
        read(&dir.path().join("watcher.log"))
    );
    (watcher, out, runs)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The attacker's `?refresh=true` of `name`, `times` times 1.2 s apart (past the 1 s throttle):
/// each reply's (body, `X-Credagent-Refresh`).
fn refresh_repeatedly(agent: &Agent, name: &str, times: usize) -> Vec<(String, String)> {
    (0..times)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(1200));
            let resp = request_as(
                ATTACKER,
                &agent.socket,
                "GET",
                &format!("/v1/secrets/{name}?refresh=true"),
            );
            assert_eq!(resp.status, 200, "{}", resp.text());
            (
                resp.text(),
                resp.header("x-credagent-refresh").unwrap_or("").to_owned(),
            )
        })
        .collect()
}

/// The audit lines of the forced refreshes of `name`.
fn refresh_lines(agent: &Agent, name: &str) -> Vec<serde_json::Value> {
    agent
        .log_text()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["action"] == "refresh" && v["secret"] == name)
        .collect()
}

/// What the attacker saw, the watcher did, and the audit said, for a value that must stay.
fn assert_left_alone(agent: &Agent, name: &str, first: &str, out: &Path, runs: &Path) {
    let seen = refresh_repeatedly(agent, name, 3);
    for (value, header) in &seen {
        assert_eq!((value.as_str(), header.as_str()), (first, "fresh"));
    }
    // Time for a watcher to hear of a change, had there been one.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(read(out), first, "the rendered file changed");
    assert_eq!(read(runs), "", "the watcher's --on-change ran");
    let lines = refresh_lines(agent, name);
    assert_eq!(lines.len(), 3, "{lines:?}");
    for line in &lines {
        assert_eq!(
            (
                &line["uid"],
                &line["refresh"],
                &line["cache"],
                &line["status"]
            ),
            (
                &serde_json::json!(ATTACKER),
                &serde_json::json!("fresh"),
                &serde_json::json!("hit"),
                &serde_json::json!(200)
            ),
            "{line}"
        );
    }
    assert!(
        !agent.log_text().contains(first),
        "the value reached the log"
    );
}

#[test]
fn an_attacker_forcing_refreshes_of_a_fresh_oauth2_token_gets_the_same_token_and_restarts_nothing()
{
    let dir = TestDir::new();
    let server = OidcServer::start(dir.path(), 600);
    dir.secret("cc-secret", format!("{CC_SECRET}\n").as_bytes());
    let sources = format!(
        r#"[sources.files]
type = "file"
dir = "{{secrets}}"

[sources.idp]
type = "oauth2"
token_url = "{url}"
client_id = "{CC_CLIENT}"
client_secret = "files/cc-secret"
grant = "client_credentials"
refresh_skew_secs = 60

[sources.idp.tokens.api]
scope = "api:read"

{allow}"#,
        url = server.token_url(),
        allow = attacker_allowed("idp/api"),
    );
    let agent = Agent::start(&dir, &config_allowing_all(CACHE, &sources));
    let (_watcher, out, runs) = render_watch(&agent, &dir, "idp/api");
    let first = read(&out);
    assert_eq!(server.successes(), 1);
    assert_left_alone(&agent, "idp/api", &first, &out, &runs);
    assert_eq!(server.successes(), 1, "{}", server.counts());
}

/// A command source `mint` whose every run prints a new value (`token-N`, counting its runs in
/// `dir/runs-of-mint`), with `settings` added to its table.
fn minting_command(dir: &TestDir, settings: &str) -> (String, PathBuf) {
    let count = dir.path().join("runs-of-mint");
    let script = dir.path().join("mint.sh");
    std::fs::write(
        &script,
        format!(
            "n=0\n[ -f {count} ] && read n < {count}\nn=$((n+1))\necho $n > {count}\necho token-$n\n",
            count = count.display()
        ),
    )
    .unwrap();
    let sources = format!(
        "[sources.mint]\ntype = \"command\"\nargv = [\"/bin/sh\", \"{script}\", \"{{id}}\"]\n{settings}\n\n{allow}",
        script = script.display(),
        allow = attacker_allowed("mint/api"),
    );
    (sources, count)
}

#[test]
fn an_attacker_forcing_refreshes_of_a_minted_command_value_gets_the_same_value_and_restarts_nothing()
 {
    let dir = TestDir::new();
    let (sources, count) = minting_command(&dir, "minted = true");
    let agent = Agent::start(&dir, &config_allowing_all(CACHE, &sources));
    let (_watcher, out, runs) = render_watch(&agent, &dir, "mint/api");
    let first = read(&out);
    assert_eq!(first, "token-1");
    assert_left_alone(&agent, "mint/api", &first, &out, &runs);
    assert_eq!(read(&count).trim(), "1", "the command ran again");
}

#[test]
fn a_command_without_minted_is_still_refreshed_on_demand() {
    let dir = TestDir::new();
    let (sources, count) = minting_command(&dir, "");
    let agent = Agent::start(&dir, &config_allowing_all(CACHE, &sources));
    let (_watcher, out, runs) = render_watch(&agent, &dir, "mint/api");
    assert_eq!(read(&out), "token-1");
    let seen = refresh_repeatedly(&agent, "mint/api", 2);
    assert_eq!(
        seen,
        [
            ("token-2".to_owned(), "refreshed".to_owned()),
            ("token-3".to_owned(), "refreshed".to_owned())
        ]
    );
    assert_eq!(read(&count).trim(), "3");
    // The watcher follows each new value.
    assert!(
        wait_until(Duration::from_secs(5), || read(&out) == "token-3"
            && read(&runs).lines().count() >= 1),
        "out {:?}, runs {:?}",
        read(&out),
        read(&runs)
    );
    assert!(
        refresh_lines(&agent, "mint/api")
            .iter()
            .all(|l| l["refresh"] == "refreshed")
    );
}

#[test]
fn an_attackers_forced_refreshes_neither_use_up_nor_reset_another_uids_throttle() {
    let dir = TestDir::new();
    let (sources, count) = minting_command(&dir, "");
    let agent = Agent::start(
        &dir,
        &config_allowing_all("min_refresh_interval_secs = 60", &sources),
    );
    assert_eq!(agent.secret("mint/api").text(), "token-1");
    let path = "/v1/secrets/mint/api?refresh=true";
    let seen = |resp: common::Response| {
        assert_eq!(resp.status, 200, "{}", resp.text());
        let header = resp.header("x-credagent-refresh").unwrap_or("").to_owned();
        (resp.text(), header)
    };
    let attacker = || seen(request_as(ATTACKER, &agent.socket, "GET", path));
    let root = || seen(agent.request("GET", path, &[], b""));
    let pair = |value: &str, header: &str| (value.to_owned(), header.to_owned());
    assert_eq!(attacker(), pair("token-2", "refreshed"));
    assert_eq!(attacker(), pair("token-2", "throttled"));
    // Root's refresh is its own: not used up by the attacker's.
    assert_eq!(root(), pair("token-3", "refreshed"));
    assert_eq!(root(), pair("token-3", "throttled"));
    // Nor did root's reset the attacker's interval into a fresh one.
    assert_eq!(attacker(), pair("token-3", "throttled"));
    assert_eq!(read(&count).trim(), "3");
}
