//! The audit file: one JSON line per access decision reaches the file while the agent runs
//! (lines are batched, not held back), with the secret's name and never its value.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{Agent, CANARY, TestDir, file_config, wait_until};

#[test]
fn every_read_and_denial_is_a_line_in_the_audit_file() {
    let dir = TestDir::new();
    dir.secret("canary", CANARY.as_bytes());
    let audit = dir.path().join("audit.log");
    let agent = Agent::start(
        &dir,
        &file_config(&format!("[audit]\nfile = \"{}\"\n", audit.display())),
    );
    for _ in 0..20 {
        assert_eq!(agent.secret("files/canary").status, 200);
    }
    assert_eq!(agent.secret("files/missing").status, 404);
    let lines = || {
        std::fs::read_to_string(&audit)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .collect::<Vec<_>>()
    };
    // Written while the agent keeps running: no shutdown flush needed.
    assert!(
        wait_until(Duration::from_secs(5), || lines().len() == 21),
        "audit lines: {:?}",
        lines()
    );
    let lines = lines();
    let reads = lines
        .iter()
        .filter(|l| l["secret"] == "files/canary" && l["decision"] == "allow" && l["status"] == 200)
        .count();
    assert_eq!(reads, 20);
    assert!(
        lines
            .iter()
            .any(|l| l["secret"] == "files/missing" && l["status"] == 404)
    );
    let text = std::fs::read_to_string(&audit).unwrap();
    assert!(!text.contains(CANARY), "a value reached the audit file");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&audit).unwrap().permissions().mode() & 0o777,
        0o640
    );
}
