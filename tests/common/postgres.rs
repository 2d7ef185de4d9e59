//! A real PostgreSQL server for the `vault-lease` tests: Debian's `postgresql` (installed by
//! `scripts/install-test-deps.sh`), a fresh cluster made by `initdb` in its own temp dir and run
//! in the foreground as the `postgres` user on a free loopback port, killed on drop.
//!
//! The superuser `postgres` has password [`SUPER_PASSWORD`] over TCP (SCRAM); OpenBao's
//! database engine logs in with it. Tests check logins with `psql` over TCP, as an
//! application would, and look up roles through the cluster's Unix socket.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::{ChildGuard, free_port, wait_until};

/// The superuser's password (TCP logins).
pub const SUPER_PASSWORD: &str = "pg-super-password-41c7";

/// A running cluster.
pub struct Postgres {
    pub port: u16,
    dir: tempfile::TempDir,
    _child: ChildGuard,
}

/// The newest installed server's `bin` directory (`/usr/lib/postgresql/N/bin`).
fn bin_dir() -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is not installed: run scripts/install-test-deps.sh")
        .filter_map(|e| {
            let e = e.ok()?;
            let n = e.file_name().to_str()?.parse().ok()?;
            Some((n, e.path().join("bin")))
        })
        .collect();
    versions.sort();
    versions.pop().expect("no /usr/lib/postgresql/N").1
}

/// The `postgres` user's uid and gid.
fn postgres_ids() -> (u32, u32) {
    let user = nix::unistd::User::from_name("postgres")
        .unwrap()
        .expect("no postgres user: run scripts/install-test-deps.sh");
    (user.uid.as_raw(), user.gid.as_raw())
}

fn as_postgres(program: &Path) -> Command {
    let (uid, gid) = postgres_ids();
    let mut command = Command::new(program);
    command
        .uid(uid)
        .gid(gid)
        .env_clear()
        .env("PATH", "/usr/bin:/bin");
    command
}

impl Postgres {
    /// `initdb` and start a cluster; waits until it accepts connections.
    pub fn start() -> Postgres {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let (uid, gid) = postgres_ids();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
        nix::unistd::chown(&data, Some(uid.into()), Some(gid.into())).unwrap();
        let pwfile = dir.path().join("pwfile");
        std::fs::write(&pwfile, SUPER_PASSWORD).unwrap();
        std::fs::set_permissions(&pwfile, std::fs::Permissions::from_mode(0o644)).unwrap();
        let bin = bin_dir();
        let out = as_postgres(&bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth-host=scram-sha-256",
                "--auth-local=trust",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("postgres.log")).unwrap();
        nix::unistd::chown(
            &dir.path().join("postgres.log"),
            Some(uid.into()),
            Some(gid.into()),
        )
        .unwrap();
        let child = as_postgres(&bin.join("postgres"))
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-k"])
            .arg(&data)
            .args(["-c", "listen_addresses=127.0.0.1"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let pg = Postgres {
            port,
            dir,
            _child: ChildGuard(child),
        };
        assert!(
            wait_until(Duration::from_secs(30), || pg
                .superuser_sql("select 1")
                .is_some()),
            "PostgreSQL did not start; log:\n{}",
            std::fs::read_to_string(pg.dir.path().join("postgres.log")).unwrap_or_default()
        );
        pg
    }

    /// OpenBao's `connection_url` for this cluster.
    pub fn connection_url(&self) -> String {
        format!(
            "postgresql://{{{{username}}}}:{{{{password}}}}@127.0.0.1:{}/postgres?sslmode=disable",
            self.port
        )
    }

    /// Runs `sql` as the superuser over the cluster's Unix socket; its output (`-tA`), or
    /// `None` when psql failed.
    pub fn superuser_sql(&self, sql: &str) -> Option<String> {
        let out = as_postgres(Path::new("/usr/bin/psql"))
            .args(["-h"])
            .arg(self.dir.path().join("data"))
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
            ])
            .args(["-tA", "-c", sql])
            .stderr(Stdio::null())
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// Whether `user`/`password` log in over TCP (as an application would) and can run a query.
    pub fn login_works(&self, user: &str, password: &str) -> bool {
        let out = Command::new("/usr/bin/psql")
            .arg(format!(
                "host=127.0.0.1 port={} dbname=postgres user={user} sslmode=disable",
                self.port
            ))
            .args(["-tA", "-c", "select 1"])
            .env("PGPASSWORD", password)
            .env("PGCONNECT_TIMEOUT", "5")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "1"
    }

    /// Whether the role exists.
    pub fn role_exists(&self, role: &str) -> bool {
        let sql = format!(
            "select count(*) from pg_roles where rolname = '{}'",
            role.replace('\'', "''")
        );
        self.superuser_sql(&sql).as_deref() == Some("1")
    }

    /// Roles whose name starts with `prefix` (OpenBao names them `v-…`).
    pub fn roles_like(&self, prefix: &str) -> Vec<String> {
        let sql = format!(
            "select rolname from pg_roles where rolname like '{}%' order by rolname",
            prefix.replace('\'', "''")
        );
        self.superuser_sql(&sql)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}
