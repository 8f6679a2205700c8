//! The test runner shared by the examples' test binaries (`harness = false`): each binary
//! compiles the example files it runs as modules, and its `main` is either the test runner
//! or, when [`CHILD_ENV`] names an example, that example's `main`, so the tests can run the
//! real program as a child process of the test binary.
#![allow(dead_code, unreachable_pub)] // each binary uses its own part of the harness

use std::ffi::OsString;
use std::io::Read;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::process::{Command, ExitCode, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Names the example a child process runs.
pub const CHILD_ENV: &str = "LUCA_EXAMPLE_CHILD";
/// The longest any child process may run.
pub const CHILD_LIMIT: Duration = Duration::from_secs(30);

/// A test: its name, and the function (a panic fails it).
pub type Test = (&'static str, fn());

/// The binary's `main`: runs `child(name)` when [`CHILD_ENV`] names an example (`None` for
/// an unknown one: exit 2), else the tests `cargo test` selected.
pub fn main(tests: &[Test], child: impl FnOnce(&str) -> Option<ExitCode>) -> ExitCode {
    if let Some(which) = std::env::var_os(CHILD_ENV) {
        return which.to_str().and_then(child).unwrap_or_else(|| {
            eprintln!("{CHILD_ENV}: unknown example {which:?}");
            ExitCode::from(2)
        });
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (list, chosen) = select(tests, &args);
    if list {
        for (name, _) in &chosen {
            println!("{name}: test");
        }
        return ExitCode::SUCCESS;
    }
    println!("\nrunning {} tests", chosen.len());
    let mut failed = Vec::new();
    for (name, test) in &chosen {
        let started = Instant::now();
        match catch_unwind(AssertUnwindSafe(test)) {
            Ok(()) => println!("test {name} ... ok ({:.2?})", started.elapsed()),
            Err(_) => {
                println!("test {name} ... FAILED");
                failed.push(*name);
            }
        }
    }
    let filtered = tests.len() - chosen.len();
    if failed.is_empty() {
        println!(
            "\ntest result: ok. {} passed; 0 failed; 0 ignored; 0 measured; {filtered} filtered out",
            chosen.len()
        );
        ExitCode::SUCCESS
    } else {
        println!("\nfailures:\n    {}", failed.join("\n    "));
        println!(
            "\ntest result: FAILED. {} passed; {} failed; 0 ignored; 0 measured; {filtered} filtered out",
            chosen.len() - failed.len(),
            failed.len()
        );
        ExitCode::from(101)
    }
}

/// Reads `cargo test`'s arguments as the standard harness would: `--list`, name filters
/// (substrings, or whole names with `--exact`), `--skip`; `--ignored` selects nothing
/// (no test here is ignored). Options with a value (`--test-threads 2`) are not filters.
pub fn select(tests: &[Test], args: &[String]) -> (bool, Vec<Test>) {
    const WITH_VALUE: [&str; 6] = [
        "--test-threads",
        "--format",
        "--color",
        "--logfile",
        "--shuffle-seed",
        "-Z",
    ];
    let (mut filters, mut skips) = (Vec::new(), Vec::new());
    let (mut exact, mut list, mut only_ignored) = (false, false, false);
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--list" => list = true,
            "--exact" => exact = true,
            "--ignored" => only_ignored = true,
            "--skip" => skips.extend(it.next().cloned()),
            a if WITH_VALUE.contains(&a) => {
                it.next();
            }
            a if a.starts_with('-') => {}
            a => filters.push(a.to_owned()),
        }
    }
    let matches = |name: &str, f: &String| {
        if exact {
            name == f
        } else {
            name.contains(f.as_str())
        }
    };
    let chosen = tests
        .iter()
        .copied()
        .filter(|_| !only_ignored)
        .filter(|(name, _)| filters.is_empty() || filters.iter().any(|f| matches(name, f)))
        .filter(|(name, _)| !skips.iter().any(|s| matches(name, s)))
        .collect();
    (list, chosen)
}

/// A 2-worker tokio runtime for the in-process runs.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// What a child process printed, and how it ended.
pub struct Child {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs this binary as the example `name` with `args`, for at most [`CHILD_LIMIT`].
pub fn run_child(name: &str, args: &[&str]) -> Child {
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut child = Command::new(exe)
        .args(args)
        .env(CHILD_ENV, name)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the example");
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = pipe.read_to_string(&mut s);
            s
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("stdout piped")));
    let err = drain(Box::new(child.stderr.take().expect("stderr piped")));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the example") {
            break status;
        }
        if started.elapsed() > CHILD_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("example {name} {args:?} still running after {CHILD_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Child {
        status,
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
    }
}

/// Arguments as `OsString`s (what the examples' `run` functions take).
pub fn os(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}
