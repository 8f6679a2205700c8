//! The main job with small sizes: in-process through `luca_examples::contention::run` (the
//! example's `main` is that function), and once as the built example binary.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use luca_examples::contention::run;

/// The job's fourth check hands a held lock to a retry hook through a process-wide slot,
/// and reads the process-wide retry metrics: two jobs in one process at once would see
/// each other's. Each in-process job holds this.
static ONE_JOB: Mutex<()> = Mutex::new(());

fn one_job() -> MutexGuard<'static, ()> {
    ONE_JOB.lock().unwrap_or_else(PoisonError::into_inner)
}

const LABELS: [&str; 6] = [
    "naive (defaults)",
    "original (WAL+retry)",
    "original, read outside txn",
    "#[db_retry] + local",
    "Db, group commit off",
    "Db (defaults)",
];
const KEYS: [&str; 6] = [
    "naive",
    "original",
    "original_read_outside_txn",
    "db_retry_local",
    "db_no_group_commit",
    "db",
];

/// Runs the job in-process: exit status, stdout, stderr.
fn job(args: &[&str]) -> (u8, String, String) {
    let _one = one_job();
    let mut out = Vec::new();
    let mut err = Vec::new();
    let argv = std::iter::once("contention").chain(args.iter().copied());
    let code = run(argv, &mut out, &mut err, false);
    (
        code,
        String::from_utf8(out).expect("stdout is UTF-8"),
        String::from_utf8(err).expect("stderr is UTF-8"),
    )
}

/// Small sizes: two writer counts, a few operations, a generous bound that small runs
/// never reach.
const SMALL: [&str; 6] = ["--writers", "1,4", "--ops", "40", "--duration", "20"];

#[test]
fn small_run_passes_and_prints_the_checks_tables_and_histograms() {
    let (code, out, err) = job(&SMALL);
    assert_eq!(code, 0, "exit status; stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("Total: 4/4 checks passed"), "{out}");
    for title in ["insert (one new row per operation)", "read-modify-write ("] {
        assert_eq!(
            out.matches(title).count(),
            1,
            "one table titled {title:?}:\n{out}"
        );
    }
    for header in [
        "ops/s",
        "×ceiling",
        "p50",
        "p99",
        "max",
        "lost",
        "escaped errors",
    ] {
        assert!(out.contains(header), "column {header:?} missing:\n{out}");
    }
    // Per workload: the ceiling row, and one row per system and writer count.
    assert_eq!(out.matches("\n  serial ceiling ").count(), 2, "{out}");
    for label in LABELS {
        let rows = out
            .lines()
            .filter(|l| l.trim_start().starts_with(label))
            .count();
        // 2 workloads × 2 writer counts in the tables, + 1 histogram line per workload.
        assert_eq!(rows, 6, "lines for {label:?}:\n{out}");
    }
    assert!(
        out.contains("latency, 4 writers: share of calls per bucket"),
        "{out}"
    );
    assert!(
        out.contains("✓ luca rows: no error escaped, no write lost"),
        "{out}"
    );
}

fn temp_dir() -> PathBuf {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let dir = std::env::temp_dir().join(format!(
        "luca-contention-test-{}-{nanos}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).expect("create a temporary directory");
    dir
}

#[test]
fn plot_writes_an_svg_with_every_series() {
    let dir = temp_dir();
    let svg_path = dir.join("chart.svg");
    let svg_arg = svg_path.to_str().expect("UTF-8 temp path");
    // Three writer counts, so a series line (three points) differs from a legend sample.
    let args = [
        "--writers",
        "1,2,4",
        "--ops",
        "24",
        "--duration",
        "20",
        "--plot",
        svg_arg,
    ];
    let (code, out, err) = job(&args);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    let svg = std::fs::read_to_string(&svg_path).expect("the plot file exists");
    std::fs::remove_dir_all(&dir).ok();

    let doc = roxmltree::Document::parse(&svg).expect("the plot is well-formed XML");
    let root = doc.root_element();
    assert_eq!(root.tag_name().name(), "svg");
    let texts: Vec<String> = root
        .descendants()
        .filter(|n| n.has_tag_name("text"))
        .filter_map(|n| n.text())
        .map(|t| t.trim().to_owned())
        .collect();
    for title in [
        "insert: throughput",
        "insert: p99 latency",
        "read_modify_write: throughput",
        "read_modify_write: p99 latency",
    ] {
        assert!(
            texts.iter().any(|t| t == title),
            "chart {title:?} missing: {texts:?}"
        );
    }
    // One legend for the four charts names every system and the ceiling.
    for label in LABELS.iter().chain(&["serial ceiling"]) {
        let n = texts.iter().filter(|t| t == label).count();
        assert_eq!(n, 1, "legend entries for {label:?}: {texts:?}");
    }
    // One line per system per chart through one point per writer count (legend samples
    // have two points), x increasing, each system in its own colour.
    let series: Vec<(Vec<f64>, &str)> = root
        .descendants()
        .filter(|n| n.has_tag_name("polyline"))
        .filter_map(|n| Some((n.attribute("points")?, n.attribute("stroke")?)))
        .map(|(points, stroke)| {
            let xs = points
                .split_whitespace()
                .filter_map(|p| p.split(',').next()?.parse::<f64>().ok())
                .collect();
            (xs, stroke)
        })
        .filter(|(xs, _): &(Vec<f64>, &str)| xs.len() == 3)
        .collect();
    assert_eq!(series.len(), 4 * LABELS.len(), "series lines: {series:?}");
    assert!(
        series
            .iter()
            .all(|(xs, _)| xs.windows(2).all(|w| w[0] < w[1])),
        "{series:?}"
    );
    let mut colours: Vec<&str> = series.iter().map(|(_, c)| *c).collect();
    colours.sort_unstable();
    colours.dedup();
    assert_eq!(
        colours.len(),
        LABELS.len(),
        "one colour per system: {colours:?}"
    );
}

#[test]
fn json_has_every_system_row_and_the_report_goes_to_stderr() {
    // On a `--db` file of our own, which the job creates and leaves.
    let dir = temp_dir();
    let db = dir.join("mine.db");
    let db_arg = db.to_str().expect("UTF-8 temp path");
    let mut args = SMALL.to_vec();
    args.extend(["--json", "--db", db_arg]);
    let (code, out, err) = job(&args);
    let tables: Vec<String> = luca_core::rusqlite::Connection::open(&db)
        .and_then(|c| {
            c.prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")?
                .query_map([], |r| r.get(0))?
                .collect()
        })
        .unwrap_or_default();
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert_eq!(tables, ["counters", "ledger", "writes"]);
    assert!(
        err.contains("Total: 4/4 checks passed"),
        "human report on stderr:\n{err}"
    );
    let json: serde_json::Value = serde_json::from_str(&out).expect("stdout is one JSON document");
    assert_eq!(json["passed"], true);
    assert_eq!(json["settings"]["writers"], serde_json::json!([1, 4]));
    assert_eq!(json["settings"]["db"], db_arg);
    assert_eq!(json["checks"].as_array().map(Vec::len), Some(4));
    let workloads = json["workloads"].as_array().expect("workloads");
    let names: Vec<&str> = workloads
        .iter()
        .filter_map(|w| w["workload"].as_str())
        .collect();
    assert_eq!(names, ["insert", "read_modify_write"]);
    for w in workloads {
        assert_eq!(w["ceiling"]["system"], "serial_ceiling");
        assert!(
            w["ceiling"]["ops_per_sec"]
                .as_f64()
                .is_some_and(|x| x > 0.0)
        );
        let rows = w["rows"].as_array().expect("rows");
        for key in KEYS {
            for writers in [1, 4] {
                let row = rows
                    .iter()
                    .find(|r| r["system"] == key && r["writers"] == writers)
                    .unwrap_or_else(|| panic!("no row for {key} at {writers} writers: {w}"));
                for field in [
                    "ops_per_sec",
                    "ratio_to_ceiling",
                    "p50_us",
                    "p99_us",
                    "max_us",
                ] {
                    assert!(row[field].is_number(), "{key}/{writers}: {field} in {row}");
                }
                assert!(row["escaped_errors"].is_object(), "{row}");
                assert!(row["lost_writes"].is_u64(), "{row}");
                let histogram: u64 = row["histogram"]
                    .as_array()
                    .expect("histogram")
                    .iter()
                    .filter_map(serde_json::Value::as_u64)
                    .sum();
                assert_eq!(Some(histogram), row["attempted"].as_u64(), "{row}");
                if row["luca"] == true {
                    assert_eq!(row["escaped_total"], 0, "{row}");
                    assert_eq!(row["lost_writes"], 0, "{row}");
                    assert_eq!(row["ok"], 40, "{row}");
                }
            }
        }
        assert_eq!(rows.len(), KEYS.len() * 2, "{w}");
    }
}

#[test]
fn bad_flags_exit_2_with_a_usage_message() {
    for args in [
        &["--bogus"][..],
        &["--writers", "0"],
        &["--writers", "1,x"],
        &["--ops", "0"],
        &["--duration", "-1"],
        &["--duration", "soon"],
        &["--json", "extra"],
    ] {
        let (code, out, err) = job(args);
        assert_eq!(code, 2, "{args:?}: stdout {out:?} stderr {err:?}");
        assert!(err.contains("Usage: contention"), "{args:?}: {err}");
        assert!(out.is_empty(), "{args:?}: nothing on stdout, got {out:?}");
    }
    let (code, out, _) = job(&["--help"]);
    assert_eq!(code, 0);
    for flag in [
        "--writers",
        "--ops",
        "--duration",
        "--db",
        "--json",
        "--plot",
    ] {
        assert!(out.contains(flag), "--help names {flag}: {out}");
    }
}

#[test]
fn db_flag_refuses_a_file_with_foreign_tables() {
    let dir = temp_dir();
    let path = dir.join("theirs.db");
    let conn = luca_core::rusqlite::Connection::open(&path).expect("open");
    conn.execute_batch("CREATE TABLE invoices (id INTEGER PRIMARY KEY)")
        .expect("create");
    drop(conn);
    let (code, _, err) = job(&["--db", path.to_str().expect("UTF-8"), "--ops", "4"]);
    let survived = luca_core::rusqlite::Connection::open(&path)
        .and_then(|c| c.query_row("SELECT count(*) FROM invoices", [], |r| r.get::<_, i64>(0)));
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("holds tables of its own (invoices)"), "{err}");
    assert_eq!(survived.ok(), Some(0), "the foreign table is left alone");
}

/// The example binary in the target directory this test was built in, built first if it
/// is missing or older than its sources (`cargo test --workspace` builds it already).
fn example_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/contention-<hash>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test runs from target/<profile>/deps");
    let binary = profile_dir
        .join("examples")
        .join(format!("contention{}", std::env::consts::EXE_SUFFIX));
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let newest_source = ["contention.rs", "src"]
        .iter()
        .flat_map(|p| walk(&manifest_dir.join(p)))
        .filter_map(|p| p.metadata().and_then(|m| m.modified()).ok())
        .max();
    let built = binary.metadata().and_then(|m| m.modified()).ok();
    if built.is_none() || newest_source > built {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let target_dir = profile_dir.parent().expect("target dir");
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-p", "luca-examples", "--example", "contention"])
            .arg("--target-dir")
            .arg(target_dir)
            .current_dir(manifest_dir);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build");
        assert!(status.success(), "building the example failed");
    }
    binary
}

/// The files under `path` (itself, when it is a file).
fn walk(path: &Path) -> Vec<PathBuf> {
    match std::fs::read_dir(path) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .flat_map(|e| walk(&e.path()))
            .collect(),
        Err(_) => vec![path.to_path_buf()],
    }
}

#[test]
fn the_example_binary_exits_0_on_a_small_run_and_2_on_a_bad_flag() {
    let binary = example_binary();
    let run = |args: &[&str]| {
        Command::new(&binary)
            .args(args)
            .output()
            .expect("run the example")
    };
    let small = run(&SMALL);
    let stdout = String::from_utf8_lossy(&small.stdout);
    assert_eq!(
        small.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&small.stderr)
    );
    assert!(stdout.contains("serial ceiling"), "{stdout}");
    assert!(stdout.contains("✓ luca rows"), "{stdout}");
    let bad = run(&["--writers", "fast"]);
    assert_eq!(bad.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("Usage: contention"), "{stderr}");
    assert!(stderr.contains("--writers"), "{stderr}");
}
