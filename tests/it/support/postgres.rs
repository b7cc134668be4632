//! A private PostgreSQL cluster for one test: Debian's `postgresql` binaries (`.ci/run` installs
//! them), `initdb` into a temporary folder, the server on a free 127.0.0.1 port with its socket in
//! that folder, password authentication for every connection. Run as the `postgres` user through
//! `runuser` when the tests run as root (initdb refuses root). Stopped when dropped.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

pub const SUPERUSER_PASSWORD: &str = "stroom-test-super";

pub struct PgCluster {
    pub dir: tempfile::TempDir,
    pub port: u16,
    bin: PathBuf,
}

fn bin_dir() -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path().join("bin")))
                .filter(|b| b.join("initdb").is_file())
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found.pop().expect(
        "PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin: \
         install Debian's `postgresql` package (.ci/run does)",
    )
}

fn running_as_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl PgCluster {
    fn command(&self, program: &str) -> Command {
        command(&self.bin, program)
    }

    pub fn start() -> PgCluster {
        Self::start_with(None)
    }

    /// A cluster that also accepts TLS with this certificate and key (PEM).
    pub fn start_with_tls(cert: &Path, key: &Path) -> PgCluster {
        Self::start_with(Some((cert, key)))
    }

    fn start_with(tls: Option<(&Path, &Path)>) -> PgCluster {
        let bin = bin_dir();
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        std::fs::create_dir(&data).expect("data dir");
        let mut ssl = String::new();
        if let Some((cert, key)) = tls {
            let (c, k) = (dir.path().join("server.crt"), dir.path().join("server.key"));
            std::fs::copy(cert, &c).expect("server certificate");
            std::fs::copy(key, &k).expect("server key");
            // The server refuses a key others can read.
            std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o600)).expect("chmod");
            ssl = format!(
                " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
                c.display(),
                k.display()
            );
        }
        let pwfile = dir.path().join("pw");
        std::fs::write(&pwfile, SUPERUSER_PASSWORD).expect("pwfile");
        if running_as_root() {
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
                .expect("chmod");
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .expect("chown");
            assert!(status.success(), "chown to postgres failed");
        }
        let port = free_port();
        let cluster = PgCluster { dir, port, bin };
        let out = cluster
            .command("initdb")
            .args(["-A", "scram-sha-256", "-U", "postgres", "--no-sync", "-D"])
            .arg(&data)
            .arg(format!("--pwfile={}", pwfile.display()))
            .output()
            .expect("initdb");
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {port} -k {} -c fsync=off{ssl}",
            cluster.dir.path().display()
        );
        let out = cluster
            .command("pg_ctl")
            .args(["-w", "-t", "60", "-D"])
            .arg(&data)
            .args(["-o", &options, "-l"])
            .arg(cluster.dir.path().join("server.log"))
            .arg("start")
            .output()
            .expect("pg_ctl start");
        assert!(
            out.status.success(),
            "pg_ctl start: {}{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(cluster.dir.path().join("server.log")).unwrap_or_default()
        );
        cluster
    }

    /// A connection URL on 127.0.0.1 (no TLS: the test cluster has none).
    pub fn url(&self, user: &str, password: &str) -> String {
        format!(
            "postgres://{user}:{password}@127.0.0.1:{}/postgres?sslmode=disable",
            self.port
        )
    }

    pub fn superuser_url(&self) -> String {
        self.url("postgres", SUPERUSER_PASSWORD)
    }

    /// Run SQL as the superuser.
    pub async fn execute(&self, sql: &str) {
        let (client, conn) = tokio_postgres::connect(&self.superuser_url(), tokio_postgres::NoTls)
            .await
            .expect("superuser connection");
        let driver = tokio::spawn(conn);
        client.batch_execute(sql).await.expect(sql);
        drop(client);
        let _ = driver.await;
    }

    pub fn stop(&self) {
        let _ = self
            .command("pg_ctl")
            .args(["-m", "immediate", "-D"])
            .arg(self.dir.path().join("data"))
            .arg("stop")
            .output();
    }
}

fn command(bin: &Path, program: &str) -> Command {
    let exe = bin.join(program);
    if running_as_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(exe);
        c
    } else {
        Command::new(exe)
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        self.stop();
    }
}
