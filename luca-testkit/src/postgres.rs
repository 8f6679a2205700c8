//! A throwaway PostgreSQL server for tests (feature `postgres`).

use std::fmt;
use std::io::{self, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use luca_core::postgres::PgDb;

/// The port number in the socket's name (`.s.PGSQL.<port>`); no TCP port is opened.
const PORT: u16 = 5432;
/// How long the server may take to come up before [`TempPostgres::start`] gives up.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Connections the server accepts: enough for 64 concurrent writers and their observers.
const MAX_CONNECTIONS: u32 = 200;
/// Names the directory of the PostgreSQL binaries to use instead of searching for them.
const BIN_ENV: &str = "LUCA_PG_BIN";
/// The command that installs the server on Debian and Ubuntu.
pub(crate) const INSTALL_HINT: &str = "apt-get install -y postgresql";

/// Why a [`TempPostgres`] could not be started.
#[derive(Debug)]
#[non_exhaustive]
pub enum PgStartError {
    /// No `initdb` was found on `PATH` or under `/usr/lib/postgresql/*/bin`.
    NotInstalled,
    /// The binaries were found, but the server did not come up.
    Failed {
        /// What went wrong, with the server's log when there is one.
        reason: String,
    },
}

impl fmt::Display for PgStartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PgStartError::NotInstalled => write!(
                f,
                "PostgreSQL is not installed: no `initdb` on PATH or under \
                 /usr/lib/postgresql/*/bin (install it with `{INSTALL_HINT}`)"
            ),
            PgStartError::Failed { reason } => {
                write!(f, "the PostgreSQL test server did not start: {reason}")
            }
        }
    }
}

impl std::error::Error for PgStartError {}

fn failed(reason: impl Into<String>) -> PgStartError {
    PgStartError::Failed {
        reason: reason.into(),
    }
}

/// A real PostgreSQL server started from the installed binaries (`initdb`, `postgres`),
/// private to the test (its cluster is a copy of one `initdb` makes once per installation,
/// kept in the temp directory as `luca-pg-template-<hash>`): its data directory and Unix socket live in a fresh temporary
/// directory, it listens on no TCP port, accepts every local connection (`trust`), and
/// runs with `fsync` off (a throwaway server needs no durability) and a `deadlock_timeout`
/// of 50 ms (tests provoke deadlocks; the default waits 1 s before looking for one).
///
/// When the process runs as root (PostgreSQL refuses to), the server runs as the
/// unprivileged user `nobody` (or `postgres`), and the directory is handed to that user.
///
/// Stopped and removed on drop, also when the test panics. A watchdog process also stops
/// and removes it when the test process ends without dropping it (a `static`, an `exit`,
/// a kill), so no server outlives its tests.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use luca_core::postgres::tokio_postgres;
/// let pg = luca_testkit::TempPostgres::start()?;
/// let (client, conn) = tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls).await?;
/// tokio::spawn(conn);
/// let one: i32 = client.query_one("SELECT 1", &[]).await?.get(0);
/// assert_eq!(one, 1);
/// # Ok(()) }
/// ```
pub struct TempPostgres {
    dir: PathBuf,
    socket_dir: PathBuf,
    server: Child,
    /// Closing it tells the watchdog to stop the server and remove `dir`.
    watchdog_stdin: Option<ChildStdin>,
    watchdog: Child,
    version: String,
}

impl fmt::Debug for TempPostgres {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TempPostgres")
            .field("dir", &self.dir)
            .field("pid", &self.server.id())
            .field("version", &self.version)
            .finish()
    }
}

impl TempPostgres {
    /// Creates a cluster with `initdb` and starts a server on it; returns once it accepts
    /// connections. The binaries are those in `$LUCA_PG_BIN` when it is set, else
    /// `initdb` on `PATH`, else the newest `/usr/lib/postgresql/*/bin`.
    pub fn start() -> Result<TempPostgres, PgStartError> {
        let bin = find_bin_dir().ok_or(PgStartError::NotInstalled)?;
        let root = tempfile::Builder::new()
            .prefix("luca-pg-")
            .tempdir()
            .map_err(|e| failed(format!("cannot create a temporary directory: {e}")))?;
        // From here the directory is removed by the watchdog (or by `Drop`), not by
        // `TempDir`, which could not remove files owned by another user when not root.
        let dir = root.keep();
        match Self::start_in(&bin, dir.clone()) {
            Ok(pg) => Ok(pg),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                Err(e)
            }
        }
    }

    fn start_in(bin: &Path, dir: PathBuf) -> Result<TempPostgres, PgStartError> {
        let owner = std::fs::metadata(&dir)
            .map_err(|e| failed(format!("cannot stat {}: {e}", dir.display())))?
            .uid();
        let run_as = if owner == 0 {
            let user = unprivileged_user().ok_or_else(|| {
                failed("running as root, and no unprivileged user (`nobody`, `postgres`) to run the server as")
            })?;
            std::os::unix::fs::chown(&dir, Some(user.0), Some(user.1)).map_err(|e| {
                failed(format!(
                    "cannot hand {} to uid {}: {e}",
                    dir.display(),
                    user.0
                ))
            })?;
            Some(user)
        } else {
            None
        };
        let data = dir.join("data");
        let socket_dir = dir.join("socket");
        let log_path = dir.join("server.log");
        std::fs::create_dir(&socket_dir)
            .map_err(|e| failed(format!("cannot create {}: {e}", socket_dir.display())))?;
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(&socket_dir, Some(uid), Some(gid))
                .map_err(|e| failed(format!("cannot chown {}: {e}", socket_dir.display())))?;
        }
        let command = |name: &str| {
            let mut c = Command::new(bin.join(name));
            c.current_dir(&dir).stdin(Stdio::null()).env("LC_ALL", "C");
            if let Some((uid, gid)) = run_as {
                c.uid(uid).gid(gid).env("HOME", &dir);
            }
            c
        };

        let version = command("postgres")
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default();

        let template = template(bin, run_as, &version)?;
        let copy = Command::new("cp")
            .arg("-a")
            .arg(template.join("data"))
            .arg(&data)
            .output()
            .map_err(|e| failed(format!("cannot run cp: {e}")))?;
        if !copy.status.success() {
            return Err(failed(format!(
                "cannot copy the cluster template {}: {}",
                template.display(),
                String::from_utf8_lossy(&copy.stderr)
            )));
        }

        let log = std::fs::File::create(&log_path)
            .map_err(|e| failed(format!("cannot create {}: {e}", log_path.display())))?;
        let log_err = log
            .try_clone()
            .map_err(|e| failed(format!("cannot clone the log handle: {e}")))?;
        let mut server = command("postgres")
            .arg("-D")
            .arg(&data)
            .arg("-k")
            .arg(&socket_dir)
            .args(["-p", &PORT.to_string()])
            .args(["-c", "listen_addresses="])
            .args(["-c", &format!("max_connections={MAX_CONNECTIONS}")])
            .args(["-c", "shared_buffers=32MB"])
            .args(["-c", "fsync=off"])
            .args(["-c", "synchronous_commit=off"])
            .args(["-c", "full_page_writes=off"])
            .args(["-c", "log_min_messages=warning"])
            // Deadlocks are found after 50 ms instead of 1 s: tests provoke them.
            .args(["-c", "deadlock_timeout=50ms"])
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|e| failed(format!("cannot run postgres: {e}")))?;

        // The watchdog: waits for its stdin to close (our `Drop`, or this process ending
        // in any way), then stops the server (fast shutdown, then a kill) and removes the
        // directory. It runs as the caller, who may signal the server and remove the
        // directory.
        let script = r#"
            cat >/dev/null
            kill -INT "$1" 2>/dev/null
            i=0
            # Until the server is gone: a clean shutdown removes postmaster.pid (its exited
            # process may stay a zombie until its parent reaps it).
            while kill -0 "$1" 2>/dev/null && [ -e "$2/data/postmaster.pid" ] && [ "$i" -lt 200 ]; do
                sleep 0.05; i=$((i+1))
            done
            kill -KILL "$1" 2>/dev/null
            rm -rf -- "$2"
        "#;
        let watchdog = Command::new("sh")
            .args(["-c", script, "luca-pg-watchdog"])
            .arg(server.id().to_string())
            .arg(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let mut watchdog = match watchdog {
            Ok(w) => w,
            Err(e) => {
                let _ = server.kill();
                let _ = server.wait();
                return Err(failed(format!("cannot start the watchdog shell: {e}")));
            }
        };
        let mut pg = TempPostgres {
            dir,
            socket_dir,
            server,
            watchdog_stdin: watchdog.stdin.take(),
            watchdog,
            version,
        };
        pg.wait_ready(&data, &log_path)?;
        Ok(pg)
    }

    /// Waits until `postmaster.pid` says the server is ready, or the server exits.
    fn wait_ready(&mut self, data: &Path, log: &Path) -> Result<(), PgStartError> {
        let started = Instant::now();
        let socket = self.socket_dir.join(format!(".s.PGSQL.{PORT}"));
        loop {
            if let Ok(Some(status)) = self.server.try_wait() {
                return Err(failed(format!(
                    "postgres exited with {status}: {}",
                    read_log(log)
                )));
            }
            let ready = std::fs::read_to_string(data.join("postmaster.pid"))
                .is_ok_and(|pid| pid.lines().nth(7).is_some_and(|l| l.trim() == "ready"));
            if ready && socket.exists() {
                return Ok(());
            }
            if started.elapsed() > START_TIMEOUT {
                return Err(failed(format!(
                    "not ready after {START_TIMEOUT:?}: {}",
                    read_log(log)
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// One server shared by every test of the test binary, started on first use, stopped
    /// and removed when the process ends (by the watchdog: a `static` is never dropped).
    ///
    /// Tests that share it should each use their own tables (or
    /// [`TempPostgres::create_database`]).
    pub fn shared() -> Result<&'static TempPostgres, &'static PgStartError> {
        static SHARED: OnceLock<Result<TempPostgres, PgStartError>> = OnceLock::new();
        SHARED.get_or_init(TempPostgres::start).as_ref()
    }

    /// [`TempPostgres::shared`] for a test that needs PostgreSQL, with the project's rule
    /// for machines without it:
    ///
    /// - installed: the shared server (a server that fails to start panics);
    /// - not installed and the `CI` environment variable unset: prints one loud line to
    ///   stderr (once per test binary) saying how to install it and that `what` is
    ///   skipped, and returns `None`; the caller returns;
    /// - not installed under `CI`: panics, so CI fails.
    ///
    /// ```no_run
    /// #[test]
    /// fn counts() {
    ///     let Some(pg) = luca_testkit::TempPostgres::shared_or_skip("counts") else {
    ///         return;
    ///     };
    ///     // … use pg.url() …
    /// # let _ = pg;
    /// }
    /// ```
    #[track_caller]
    pub fn shared_or_skip(what: &str) -> Option<&'static TempPostgres> {
        match TempPostgres::shared() {
            Ok(pg) => Some(pg),
            Err(PgStartError::NotInstalled) if std::env::var_os("CI").is_none() => {
                static SAID: OnceLock<()> = OnceLock::new();
                SAID.get_or_init(|| {
                    let exe = std::env::current_exe()
                        .ok()
                        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                        .unwrap_or_default();
                    // Straight to the file descriptor: libtest captures `eprintln!` of a
                    // passing test, and this line must be seen.
                    let _ = writeln!(
                        io::stderr(),
                        "\n!!! SKIPPED PostgreSQL tests of `{exe}` (first: {what}): PostgreSQL \
                         is not installed (no `initdb` on PATH or under /usr/lib/postgresql/*/bin); \
                         install it with `{INSTALL_HINT}` to run them (with CI set they fail) !!!\n"
                    );
                });
                None
            }
            Err(e) => panic!("{what}: {e}"),
        }
    }

    /// A connection string for `tokio_postgres::connect` (and
    /// `tokio_postgres::Config::from_str`): user `postgres`, database `postgres`, over the
    /// server's Unix socket.
    pub fn url(&self) -> String {
        self.url_for("postgres")
    }

    /// [`TempPostgres::url`] for another database of this server.
    pub fn url_for(&self, database: &str) -> String {
        format!(
            "postgresql://postgres@{}:{PORT}/{}",
            percent_encode(&self.socket_dir.to_string_lossy()),
            percent_encode(database)
        )
    }

    /// The directory of the server's Unix socket.
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// What `postgres --version` printed, e.g. `postgres (PostgreSQL) 15.18 (Debian …)`.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// A [`PgDb`] on the server's `postgres` database, with its defaults.
    pub async fn pg_db(&self) -> luca_core::Result<PgDb> {
        PgDb::connect(&self.url()).await
    }

    /// Creates a fresh, empty database with a unique name and returns its
    /// [`url`](TempPostgres::url_for).
    pub async fn create_database(&self) -> luca_core::Result<String> {
        use luca_core::postgres::tokio_postgres;
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "luca_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let (client, conn) = tokio_postgres::connect(&self.url(), tokio_postgres::NoTls).await?;
        let driver = tokio::spawn(conn);
        let created = client
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await;
        drop(client);
        let _ = driver.await;
        created?;
        Ok(self.url_for(&name))
    }
}

impl Drop for TempPostgres {
    fn drop(&mut self) {
        // Closing the pipe is the watchdog's signal; it stops the server and removes the
        // directory, and we wait for it so that both are gone when `drop` returns.
        drop(self.watchdog_stdin.take());
        let _ = self.watchdog.wait();
        let _ = self.server.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A cluster made by `initdb` once per installation and user, kept in the system's temp
/// directory (`luca-pg-template-<hash>`) and copied for each server: `initdb` takes
/// seconds on a loaded machine, a copy a fraction of one. Made in a directory of its own
/// and renamed into place, so a concurrent test binary sees either no template or a whole
/// one.
fn template(
    bin: &Path,
    run_as: Option<(u32, u32)>,
    version: &str,
) -> Result<PathBuf, PgStartError> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (
        bin,
        version,
        run_as,
        "-U postgres -A trust -E UTF8 --no-locale --wal-segsize=1",
    )
        .hash(&mut h);
    let path = std::env::temp_dir().join(format!("luca-pg-template-{:016x}", h.finish()));
    if path.join("data").join("PG_VERSION").is_file() {
        return Ok(path);
    }
    let staging = tempfile::Builder::new()
        .prefix("luca-pg-template-staging-")
        .tempdir()
        .map_err(|e| failed(format!("cannot create a temporary directory: {e}")))?;
    if let Some((uid, gid)) = run_as {
        std::os::unix::fs::chown(staging.path(), Some(uid), Some(gid))
            .map_err(|e| failed(format!("cannot chown {}: {e}", staging.path().display())))?;
    }
    let mut init = Command::new(bin.join("initdb"));
    init.current_dir(staging.path())
        .stdin(Stdio::null())
        .env("LC_ALL", "C")
        .arg("-D")
        .arg(staging.path().join("data"))
        .args([
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-locale",
            "--no-sync",
            // 1 MB WAL segments instead of 16: less to copy for each server.
            "--wal-segsize=1",
        ]);
    if let Some((uid, gid)) = run_as {
        init.uid(uid).gid(gid).env("HOME", staging.path());
    }
    let out = init
        .output()
        .map_err(|e| failed(format!("cannot run initdb: {e}")))?;
    if !out.status.success() {
        return Err(failed(format!(
            "initdb failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    let staged = staging.keep();
    if std::fs::rename(&staged, &path).is_err() {
        // Another process put its template there first: use that one.
        let _ = std::fs::remove_dir_all(&staged);
        if !path.join("data").join("PG_VERSION").is_file() {
            return Err(failed(format!(
                "cannot put the cluster template at {}",
                path.display()
            )));
        }
    }
    Ok(path)
}

/// The directory of `initdb` and `postgres`: `$LUCA_PG_BIN` when set (and nothing else
/// then), else `initdb` on `PATH` (symlinks resolved, so the server binary of the same
/// installation is found beside it), else the newest `/usr/lib/postgresql/*/bin`.
fn find_bin_dir() -> Option<PathBuf> {
    let has_server = |dir: &Path| dir.join("initdb").is_file() && dir.join("postgres").is_file();
    if let Some(dir) = std::env::var_os(BIN_ENV) {
        let dir = PathBuf::from(dir);
        return has_server(&dir).then_some(dir);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let initdb = dir.join("initdb");
            if initdb.is_file()
                && let Ok(real) = initdb.canonicalize()
                && let Some(real_dir) = real.parent()
                && has_server(real_dir)
            {
                return Some(real_dir.to_path_buf());
            }
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            has_server(&bin).then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

/// The uid and gid of `nobody` (or `postgres`), read from `/etc/passwd`.
fn unprivileged_user() -> Option<(u32, u32)> {
    let mut passwd = String::new();
    std::fs::File::open("/etc/passwd")
        .ok()?
        .read_to_string(&mut passwd)
        .ok()?;
    ["nobody", "postgres"].into_iter().find_map(|name| {
        passwd.lines().find_map(|line| {
            let mut f = line.split(':');
            if f.next()? != name {
                return None;
            }
            let uid = f.nth(1)?.parse::<u32>().ok()?;
            let gid = f.next()?.parse::<u32>().ok()?;
            (uid != 0).then_some((uid, gid))
        })
    })
}

fn read_log(path: &Path) -> String {
    let log = std::fs::read_to_string(path).unwrap_or_default();
    let tail: Vec<&str> = log.lines().rev().take(20).collect();
    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
}

/// Percent-encodes everything but unreserved characters, for the host and path of a URL.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
