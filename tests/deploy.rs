//! Deployment artefacts checked by the tools their ecosystems use: the Containerfile by hadolint,
//! the Kubernetes example by kubernetes-validate (--strict), plus the properties the issue asks
//! of them (final image FROM scratch as a non-root uid; native sidecar, in-memory socket volume,
//! ConfigMap-mounted control file, projected tokens, IPC_LOCK only) and the example's agent config
//! accepted by the real `credagent check-config` and run under the pod's fsGroup as the kubelet
//! applies it (the app's uid reaches the socket through it). The .deb and the image build/run are
//! tested by scripts/test-packaging.sh (they need root and system tools).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Stdio;
use std::time::Duration;

use common::{
    ChildGuard, TestDir, bin, python_reply, python_request, repo_root, try_request, venv_bin,
    wait_until,
};
use serde_json::Value;

#[test]
fn containerfile_passes_hadolint() {
    let out = common::command(venv_bin("hadolint"))
        .arg(repo_root().join("packaging/container/Containerfile"))
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "hadolint:\n{text}");
    assert!(text.trim().is_empty(), "hadolint findings:\n{text}");
}

#[test]
fn final_image_is_scratch_and_non_root() {
    let text =
        std::fs::read_to_string(repo_root().join("packaging/container/Containerfile")).unwrap();
    let instructions: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let froms: Vec<usize> = instructions
        .iter()
        .enumerate()
        .filter(|(_, l)| l.starts_with("FROM "))
        .map(|(i, _)| i)
        .collect();
    assert!(froms.len() >= 2, "not a multi-stage build");
    let last = *froms.last().unwrap();
    let final_stage = &instructions[last..];
    assert_eq!(final_stage[0], "FROM scratch");
    assert!(final_stage.contains(&"USER 65532:65532"), "{final_stage:?}");
    assert!(
        !final_stage.iter().any(|l| l.starts_with("RUN ")),
        "a RUN in the final stage needs a shell: {final_stage:?}"
    );
}

/// All documents of the example, as JSON (PyYAML from the test venv).
fn kubernetes_docs() -> Vec<Value> {
    let out = common::command(venv_bin("python"))
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))",
        ])
        .arg(repo_root().join("examples/kubernetes/pod.yaml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn doc<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

#[test]
fn kubernetes_example_passes_kubernetes_validate() {
    let out = common::command(venv_bin("kubernetes-validate"))
        .arg("--strict")
        .arg(repo_root().join("examples/kubernetes/pod.yaml"))
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "kubernetes-validate:\n{text}");
    for resource in [
        "pod/web",
        "configmap/credagent-config",
        "configmap/credagent-control",
    ] {
        assert!(
            text.contains(&format!("passed for resource {resource}")),
            "{resource} not validated:\n{text}"
        );
    }
}

#[test]
fn kubernetes_sidecar_has_the_required_shape() {
    let docs = kubernetes_docs();
    let pod = doc(&docs, "Pod", "web");
    let spec = &pod["spec"];
    let agent = &spec["initContainers"][0];
    assert_eq!(agent["name"], "credagent");
    assert_eq!(agent["restartPolicy"], "Always", "native sidecar");
    let security = &agent["securityContext"];
    assert_eq!(
        security["capabilities"]["add"],
        serde_json::json!(["IPC_LOCK"])
    );
    assert_eq!(security["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert_eq!(security["runAsUser"], 65532);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    // The image has no shell: both probes run the binary the image's ENTRYPOINT names.
    let entrypoint =
        std::fs::read_to_string(repo_root().join("packaging/container/Containerfile")).unwrap();
    assert!(entrypoint.contains(r#"ENTRYPOINT ["/usr/bin/credagent", "serve"]"#));
    for probe in ["startupProbe", "readinessProbe"] {
        assert_eq!(
            agent[probe]["exec"]["command"],
            serde_json::json!([
                "/usr/bin/credagent",
                "health",
                "--ready",
                "--socket",
                "/run/credagent/agent.sock"
            ]),
            "{probe}"
        );
    }

    let volume = |name: &str| {
        spec["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no volume {name}"))
            .clone()
    };
    assert_eq!(volume("credagent-socket")["emptyDir"]["medium"], "Memory");
    assert_eq!(
        volume("credagent-control")["configMap"]["name"],
        "credagent-control"
    );
    let audiences: Vec<Value> = ["aws-token", "vault-token"]
        .iter()
        .map(|n| volume(n)["projected"]["sources"][0]["serviceAccountToken"]["audience"].clone())
        .collect();
    assert_eq!(audiences, vec!["sts.amazonaws.com", "vault"]);

    let mounts = |container: &Value| container["volumeMounts"].as_array().unwrap().clone();
    for container in [agent, &spec["containers"][0]] {
        assert!(
            mounts(container)
                .iter()
                .any(|m| m["name"] == "credagent-socket" && m["mountPath"] == "/run/credagent"),
            "{} does not share the socket volume",
            container["name"]
        );
    }
    // A subPath mount never sees ConfigMap updates: the control file must be a directory mount.
    let control = mounts(agent)
        .into_iter()
        .find(|m| m["name"] == "credagent-control")
        .unwrap();
    assert!(control.get("subPath").is_none());
    let config = doc(&docs, "ConfigMap", "credagent-config")["data"]["config.toml"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(config.contains(&format!(
        "file = \"{}/control\"",
        control["mountPath"].as_str().unwrap()
    )));
    // Vault logs in with the projected token where it is mounted.
    let vault_mount = mounts(agent)
        .into_iter()
        .find(|m| m["name"] == "vault-token")
        .unwrap();
    assert!(config.contains(&format!(
        "jwt_file = \"{}/token\"",
        vault_mount["mountPath"].as_str().unwrap()
    )));
}

#[test]
fn kubernetes_example_config_passes_check_config() {
    let docs = kubernetes_docs();
    let config = doc(&docs, "ConfigMap", "credagent-config")["data"]["config.toml"]
        .as_str()
        .unwrap()
        .to_owned();
    // A Vault that is down when the pod starts must not crash-loop the agent.
    assert!(config.contains("startup_check = \"retry\""), "{config}");
    // Only the pod's mounts (secrets directory, projected Vault token) are replaced by local
    // stand-ins; everything else is checked as written.
    let dir = TestDir::new();
    let token = dir.path().join("vault-token");
    std::fs::write(&token, "header.payload.signature").unwrap();
    // A credential file must be private to the agent (README "Refused credential files").
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let config = config
        .replace("/etc/credagent/files", &dir.secrets().display().to_string())
        .replace("/var/run/secrets/vault/token", &token.display().to_string());
    let path = dir.path().join("config.toml");
    std::fs::write(&path, config).unwrap();
    let out = common::command(bin())
        .arg("check-config")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The example's socket settings do what its comments say under the pod's `fsGroup`, applied as
/// the kubelet applies it: the socket's `emptyDir` is group-owned by the fsGroup, mode 2777, and
/// every process of every container carries the fsGroup as a supplementary group. The agent runs
/// as the example's uid with the example's config (only the pod's mounts replaced by local
/// stand-ins; Vault is unreachable here and retried, as `startup_check = "retry"` says). The app's
/// uid reads a secret through the fsGroup; the same uid without the supplementary group cannot
/// even connect.
#[test]
fn kubernetes_fs_group_lets_the_app_container_and_no_one_else_reach_the_socket() {
    let docs = kubernetes_docs();
    let spec = &doc(&docs, "Pod", "web")["spec"];
    let fs_group = spec["securityContext"]["fsGroup"].as_u64().unwrap();
    let ids = |container: &Value| {
        let security = &container["securityContext"];
        (
            security["runAsUser"].as_u64().unwrap().to_string(),
            security["runAsGroup"].as_u64().unwrap().to_string(),
        )
    };
    let (agent_uid, agent_gid) = ids(&spec["initContainers"][0]);
    let (app_uid, app_gid) = ids(&spec["containers"][0]);
    let config = doc(&docs, "ConfigMap", "credagent-config")["data"]["config.toml"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        config.contains(&format!("socket_group = \"{fs_group}\"")),
        "the socket's group is not the pod's fsGroup:\n{config}"
    );

    let dir = TestDir::new();
    // The emptyDir as the kubelet leaves it with an fsGroup.
    let run = dir.path().join("run");
    std::fs::create_dir(&run).unwrap();
    nix::unistd::chown(
        &run,
        None,
        Some(nix::unistd::Gid::from_raw(fs_group as u32)),
    )
    .unwrap();
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o2777)).unwrap();
    let socket = run.join("agent.sock");
    let control = dir.path().join("control");
    std::fs::create_dir(&control).unwrap();
    std::fs::write(control.join("control"), "").unwrap();
    let token = dir.path().join("vault-token");
    std::fs::write(&token, "header.payload.signature").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    nix::unistd::chown(
        &token,
        Some(nix::unistd::Uid::from_raw(agent_uid.parse().unwrap())),
        None,
    )
    .unwrap();
    dir.secret("app-key", b"k3y");
    let config = config
        .replace("/run/credagent/agent.sock", &socket.display().to_string())
        .replace(
            "/etc/credagent/control/control",
            &control.join("control").display().to_string(),
        )
        .replace("/etc/credagent/files", &dir.secrets().display().to_string())
        .replace("/var/run/secrets/vault/token", &token.display().to_string());
    let path = dir.path().join("config.toml");
    std::fs::write(&path, config).unwrap();

    let log = std::fs::File::create(dir.path().join("agent.log")).unwrap();
    // The capabilities the pod adds (IPC_LOCK, for `lock_memory = "required"`), kept across the
    // change of uid as the container runtime keeps them.
    let caps = spec["initContainers"][0]["securityContext"]["capabilities"]["add"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| format!("+{}", c.as_str().unwrap().to_lowercase()))
        .collect::<Vec<_>>()
        .join(",");
    let _agent = ChildGuard(
        common::command("/usr/bin/setpriv")
            .arg(format!("--reuid={agent_uid}"))
            .arg(format!("--regid={agent_gid}"))
            .arg(format!("--groups={fs_group}"))
            .arg(format!("--inh-caps={caps}"))
            .arg(format!("--ambient-caps={caps}"))
            .arg("--")
            .arg(bin())
            .args(["serve", "--config"])
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    assert!(
        wait_until(Duration::from_secs(20), || {
            try_request(&socket, "GET", "/v1/health", &[], b"").is_ok_and(|r| r.status == 200)
        }),
        "the agent did not come up; log:\n{}",
        std::fs::read_to_string(dir.path().join("agent.log")).unwrap_or_default()
    );
    let meta = std::fs::metadata(&socket).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o660);
    assert_eq!(u64::from(meta.gid()), fs_group);

    let app = |groups: &str| {
        common::command("/usr/bin/setpriv")
            .arg(format!("--reuid={app_uid}"))
            .arg(format!("--regid={app_gid}"))
            .arg(groups)
            .arg("--")
            .args(python_request(&socket, "GET", "/v1/secrets/files/app-key"))
            .output()
            .unwrap()
    };
    let read = python_reply(&app(&format!("--groups={fs_group}")), "in the fsGroup");
    assert_eq!((read.status, read.body.as_slice()), (200, &b"k3y"[..]));
    let outside = app("--clear-groups");
    assert!(!outside.status.success());
    assert!(
        String::from_utf8_lossy(&outside.stderr).contains("Permission denied"),
        "{}",
        String::from_utf8_lossy(&outside.stderr)
    );
}
