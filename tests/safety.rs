//! Safe-by-default refusals, each through the real binary with the exact message a user sees:
//! credential files others can read or own (exit 78 at start, refused at reload), the env source
//! without a prefix or asked for the agent's own variables, plain http off the host, and
//! `render -o` onto a symlink.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use common::{Agent, CANARY, TestDir, bin, file_config, wait_until};

fn run(args: &[&str], config: &Path) -> Output {
    common::command(bin())
        .args(args)
        .arg("--config")
        .arg(config)
        .env("CREDAGENT_LOG", "info")
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn write_mode(path: &Path, text: &str, mode: u32) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn vault_token_config(token: &Path) -> String {
    file_config(&format!(
        "[sources.vault]\ntype = \"vault\"\naddress = \"http://127.0.0.1:1\"\nauth = {{ method = \"token\", token_file = \"{}\" }}\n",
        token.display()
    ))
}

fn me() -> String {
    nix::unistd::User::from_uid(nix::unistd::geteuid())
        .unwrap()
        .unwrap()
        .name
}

#[test]
fn a_group_readable_vault_token_file_stops_the_agent_with_78_naming_mode_owner_and_fix() {
    let dir = TestDir::new();
    let token = dir.path().join("vault-token");
    write_mode(&token, "s.token", 0o640);
    let config = dir.write_config(&vault_token_config(&token));
    let me = me();
    let owners = if me == "root" {
        "root (the agent's user)".to_owned()
    } else {
        format!("{me} (the agent's user) or root")
    };
    let want = format!(
        "{config}: sources.vault.auth.token_file: {t} has mode 0640 and owner {me}; a credential \
         file must be owned by {owners} and not readable or writable by group or others; fix: \
         chown {me} {t} && chmod 0600 {t}",
        config = config.display(),
        t = token.display()
    );
    let out = run(&["check-config"], &config);
    assert_eq!(out.status.code(), Some(78));
    assert_eq!(stderr(&out), format!("credagent: invalid config: {want}\n"));
    let out = run(&["serve"], &config);
    assert_eq!(out.status.code(), Some(78), "{}", stderr(&out));
    assert!(stderr(&out).contains(&want), "{}", stderr(&out));
}

#[test]
fn an_aws_key_file_owned_by_another_user_is_refused_even_at_mode_0600() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: chown to another user needs root");
        return;
    }
    let dir = TestDir::new();
    let id = dir.path().join("key-id");
    let secret = dir.path().join("secret-key");
    write_mode(&id, "AKIAEXAMPLE", 0o600);
    write_mode(&secret, "secret", 0o600);
    // nobody could rewrite it and swap the agent's identity for one it controls.
    std::os::unix::fs::chown(&secret, Some(65534), Some(65534)).unwrap();
    let config = dir.write_config(&file_config(&format!(
        "[sources.aws]\ntype = \"aws-secretsmanager\"\nregion = \"eu-west-1\"\nauth = \"access-key\"\naccess_key_id_file = \"{}\"\nsecret_access_key_file = \"{}\"\n",
        id.display(),
        secret.display()
    )));
    let out = run(&["check-config"], &config);
    assert_eq!(out.status.code(), Some(78));
    let owner = nix::unistd::User::from_uid(65534.into())
        .unwrap()
        .map_or_else(|| "65534".to_owned(), |u| u.name);
    assert_eq!(
        stderr(&out),
        format!(
            "credagent: invalid config: {c}: sources.aws.secret_access_key_file: {s} has mode \
             0600 and owner {owner}; a credential file must be owned by root (the agent's user) \
             and not readable or writable by group or others; fix: chown root {s} && chmod 0600 \
             {s}\n",
            c = config.display(),
            s = secret.display()
        )
    );
}

#[test]
fn reload_refuses_a_world_readable_approle_secret_id_and_keeps_serving() {
    let dir = TestDir::new();
    dir.secret("app/db", CANARY.as_bytes());
    let mut agent = Agent::start(&dir, &file_config(""));
    let role_id = dir.path().join("role_id");
    let secret_id = dir.path().join("secret_id");
    write_mode(&role_id, "role", 0o600);
    write_mode(&secret_id, "secret", 0o644);
    let bad = file_config(&format!(
        "[sources.vault]\ntype = \"vault\"\naddress = \"http://127.0.0.1:1\"\nauth = {{ method = \"approle\", role_id_file = \"{}\", secret_id_file = \"{}\" }}\n",
        role_id.display(),
        secret_id.display()
    ));
    dir.write_config(&bad);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent.pid() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    let needle = format!(
        "sources.vault.auth.secret_id_file: {} has mode 0644",
        secret_id.display()
    );
    assert!(
        wait_until(Duration::from_secs(10), || agent
            .log_text()
            .contains(&needle)),
        "{}",
        agent.log_text()
    );
    assert!(agent.log_text().contains("reload refused"));
    assert_eq!(agent.secret("files/app/db").status, 200);
    assert!(agent.stop().success());
}

#[test]
fn the_ca_bundle_may_be_world_readable() {
    let dir = TestDir::new();
    let token = dir.path().join("vault-token");
    write_mode(&token, "s.token", 0o600);
    let ca = dir.path().join("ca.pem");
    write_mode(&ca, "-----BEGIN CERTIFICATE-----\n", 0o644);
    let config = dir.write_config(&vault_token_config(&token).replace(
        "type = \"vault\"\n",
        &format!("type = \"vault\"\nca_file = \"{}\"\n", ca.display()),
    ));
    let out = run(&["check-config"], &config);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn an_env_source_without_a_prefix_or_with_the_agents_own_is_a_config_error() {
    let dir = TestDir::new();
    let cases = [
        (
            "",
            "sources.env.prefix: is required and must not be empty (e.g. \"APP_SECRET_\"): \
             without one, every variable of the agent would be a secret",
        ),
        (
            "prefix = \"\"\n",
            "sources.env.prefix: is required and must not be empty (e.g. \"APP_SECRET_\"): \
             without one, every variable of the agent would be a secret",
        ),
        (
            "prefix = \"AWS_\"\n",
            "sources.env.prefix: \"AWS_\" names the agent's own variables (AWS_*, VAULT_*, BAO_*, \
             CREDAGENT_*), which are never served; choose another, e.g. \"APP_SECRET_\"",
        ),
    ];
    for (prefix, want) in cases {
        let config = dir.write_config(&file_config(&format!(
            "[sources.env]\ntype = \"env\"\n{prefix}"
        )));
        let out = run(&["check-config"], &config);
        assert_eq!(out.status.code(), Some(78), "{prefix}");
        assert_eq!(
            stderr(&out),
            format!("credagent: invalid config: {}: {want}\n", config.display()),
            "{prefix}"
        );
    }
}

#[test]
fn an_env_rule_for_everything_never_hands_out_the_agents_own_credentials() {
    let dir = TestDir::new();
    // Prefixes chosen so that prefix + id spells the agent's own variables.
    let template = file_config(
        r#"
[sources.app]
type = "env"
prefix = "APP_SECRET_"

[sources.a]
type = "env"
prefix = "A"

[sources.v]
type = "env"
prefix = "V"

[sources.cred]
type = "env"
prefix = "CRED"

[sources.b]
type = "env"
prefix = "B"
"#,
    )
    .replace(
        "secrets = [\"files/*\"]",
        "secrets = [\"files/*\", \"app/*\", \"a/*\", \"v/*\", \"cred/*\", \"b/*\"]",
    );
    let env = [
        ("APP_SECRET_DB", "served"),
        ("AWS_SECRET_ACCESS_KEY", CANARY),
        ("AWS_SESSION_TOKEN", CANARY),
        ("VAULT_TOKEN", CANARY),
        ("BAO_TOKEN", CANARY),
        ("CREDAGENT_PROBE", CANARY),
    ];
    let mut agent = Agent::start_with_env(&dir, &template, &env);
    let ok = agent.secret("app/DB");
    assert_eq!((ok.status, ok.text().as_str()), (200, "served"));
    for name in [
        "a/WS_SECRET_ACCESS_KEY",
        "a/WS_SESSION_TOKEN",
        "v/AULT_TOKEN",
        "b/AO_TOKEN",
        "cred/AGENT_PROBE",
    ] {
        let resp = agent.secret(name);
        assert_eq!(resp.status, 404, "{name}: {}", resp.text());
        assert!(!resp.text().contains(CANARY), "{name}");
    }
    assert!(agent.stop().success());
}

#[test]
fn plain_http_to_a_remote_vault_or_aws_endpoint_is_a_config_error() {
    let dir = TestDir::new();
    let token = dir.path().join("vault-token");
    write_mode(&token, "s.token", 0o600);
    let clear = |url: &str| {
        format!(
            "\"{url}\" is plain http to a host other than loopback (tokens and secret values \
             would cross the network in clear text); use https://, or set allow_plain_http = \
             true (for tests only)"
        )
    };
    let vault =
        vault_token_config(&token).replace("http://127.0.0.1:1", "http://vault.internal:8200");
    let aws = |extra: &str| {
        file_config(&format!(
            "[sources.aws]\ntype = \"aws-secretsmanager\"\nregion = \"eu-west-1\"\nauth = \"instance-profile\"\n{extra}"
        ))
    };
    let cases = [
        (
            vault.clone(),
            format!(
                "sources.vault.address: {}",
                clear("http://vault.internal:8200")
            ),
        ),
        (
            aws("endpoint_url = \"http://sm.internal\"\n"),
            format!("sources.aws.endpoint_url: {}", clear("http://sm.internal")),
        ),
        (
            aws(
                "[sources.aws.assume_role]\nrole_arn = \"arn:aws:iam::210987654321:role/r\"\nsts_endpoint = \"http://sts.internal\"\n",
            ),
            format!(
                "sources.aws.assume_role.sts_endpoint: {}",
                clear("http://sts.internal")
            ),
        ),
    ];
    for (template, want) in cases {
        let config = dir.write_config(&template);
        let out = run(&["check-config"], &config);
        assert_eq!(out.status.code(), Some(78), "{want}");
        assert_eq!(
            stderr(&out),
            format!("credagent: invalid config: {}: {want}\n", config.display())
        );
    }
    // The documented escape hatch, for tests only.
    let config = dir.write_config(&vault.replace(
        "type = \"vault\"\n",
        "type = \"vault\"\nallow_plain_http = true\n",
    ));
    let out = run(&["check-config"], &config);
    assert!(out.status.success(), "{}", stderr(&out));
}

fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect()
}

#[test]
fn render_refuses_a_symlinked_output_and_writes_0600_otherwise() {
    let dir = TestDir::new();
    dir.secret("app/db", CANARY.as_bytes());
    let agent = Agent::start(&dir, &file_config(""));
    let out_dir = dir.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let template = dir.path().join("app.conf.tmpl");
    std::fs::write(&template, "password={{ secret files/app/db }}\n").unwrap();
    let template = template.display().to_string();

    // An attacker's link at the output path, pointing at a file it wants overwritten.
    let victim = dir.path().join("victim");
    std::fs::write(&victim, "keep").unwrap();
    let link = out_dir.join("app.conf");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    let link_arg = link.display().to_string();
    let out = agent.cli_as(None, &["render", &template, "-o", &link_arg]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        format!(
            "credagent: cannot write the rendered file: {} is a symlink; refusing to write \
             through it (give the real path)\n",
            link.display()
        )
    );
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
    assert!(leftovers(&out_dir).is_empty());

    std::fs::remove_file(&link).unwrap();
    let out = agent.cli_as(None, &["render", &template, "-o", &link_arg]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(&link).unwrap(),
        format!("password={CANARY}\n")
    );
    assert_eq!(std::fs::metadata(&link).unwrap().mode() & 0o7777, 0o600);
    let out = agent.cli_as(
        None,
        &["render", &template, "-o", &link_arg, "--mode", "0640"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::metadata(&link).unwrap().mode() & 0o7777, 0o640);
    assert!(leftovers(&out_dir).is_empty());
}

#[test]
fn render_that_fails_leaves_no_temporary_file() {
    let dir = TestDir::new();
    let agent = Agent::start(&dir, &file_config(""));
    let out_dir = dir.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let template = dir.path().join("t.tmpl");
    std::fs::write(&template, "x={{ secret files/missing }}\n").unwrap();
    let target = out_dir.join("t.conf").display().to_string();
    let out = agent.cli_as(
        None,
        &["render", &template.display().to_string(), "-o", &target],
    );
    assert_ne!(out.status.code(), Some(0));
    assert!(!out_dir.join("t.conf").exists());
    assert!(leftovers(&out_dir).is_empty());
}
