//! A real password store for the command-source tests: a GnuPG key generated in batch mode
//! (no passphrase) in a private `GNUPGHOME`, and a `pass` store encrypted to it, which Debian's
//! `gopass` reads too. The gpg-agent it starts is stopped on drop.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Stdio;

use super::TestDir;

pub struct PassStore {
    /// `GNUPGHOME`.
    pub gnupg_home: PathBuf,
    /// `PASSWORD_STORE_DIR`.
    pub store: PathBuf,
}

impl PassStore {
    /// Generates the key and initialises an empty store under `dir`.
    pub fn new(dir: &TestDir) -> PassStore {
        let gnupg_home = dir.path().join("gnupg");
        std::fs::create_dir(&gnupg_home).unwrap();
        std::fs::set_permissions(&gnupg_home, std::fs::Permissions::from_mode(0o700)).unwrap();
        let store = PassStore {
            gnupg_home,
            store: dir.path().join("password-store"),
        };
        store.run(
            "gpg",
            &[
                "--batch",
                "--passphrase",
                "",
                "--quick-gen-key",
                "credagent test <test@credagent.invalid>",
                "default",
                "default",
                "never",
            ],
            b"",
        );
        let keys = store.run("gpg", &["--list-keys", "--with-colons"], b"");
        let fingerprint = keys
            .lines()
            .find_map(|l| l.strip_prefix("fpr:"))
            .and_then(|l| l.split(':').find(|f| !f.is_empty()))
            .unwrap()
            .to_owned();
        store.run("pass", &["init", &fingerprint], b"");
        store
    }

    /// `pass insert -m NAME` with `value` on stdin (multi-line, stored as given).
    pub fn insert(&self, name: &str, value: &[u8]) {
        self.run("pass", &["insert", "-m", name], value);
    }

    /// A file in the store that is not valid OpenPGP (gpg fails to decrypt it).
    pub fn insert_corrupt(&self, name: &str) {
        let path = self.store.join(format!("{name}.gpg"));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"not openpgp\n").unwrap();
    }

    /// The environment the agent passes through to its commands.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("GNUPGHOME", self.gnupg_home.display().to_string()),
            ("PASSWORD_STORE_DIR", self.store.display().to_string()),
        ]
    }

    fn run(&self, program: &str, args: &[&str], stdin: &[u8]) -> String {
        let mut child = super::command(program)
            .args(args)
            .envs(self.env())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("{program}: {e} (scripts/install-test-deps.sh installs it)")
            });
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

impl Drop for PassStore {
    fn drop(&mut self) {
        let _ = super::command("gpgconf")
            .args(["--kill", "gpg-agent"])
            .env("GNUPGHOME", &self.gnupg_home)
            .status();
    }
}
