//! The measuring harness shared by `luca-bench` and the `sqlx-baseline` process (which
//! includes this file with `#[path]`, so both sides measure and report the same way).
//! Only std and tokio.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The two workloads of the benchmark.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Workload {
    /// One row per transaction.
    Insert,
    /// `SELECT` a counter, `UPDATE` it to the value read + 1, in one transaction.
    Rmw,
}

impl Workload {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Workload::Insert => "insert",
            Workload::Rmw => "rmw",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Workload> {
        match s {
            "insert" => Some(Workload::Insert),
            "rmw" => Some(Workload::Rmw),
            _ => None,
        }
    }
}

/// The schema of both workloads; the counter starts at 0.
pub(crate) const SCHEMA: &str =
    "CREATE TABLE items (id INTEGER PRIMARY KEY, writer INTEGER NOT NULL, \
     seq INTEGER NOT NULL, payload TEXT NOT NULL);
     CREATE TABLE counter (id INTEGER PRIMARY KEY, n INTEGER NOT NULL);
     INSERT INTO counter (id, n) VALUES (1, 0);";
/// The insert workload's statement: `?1` writer, `?2` sequence number, `?3` payload.
pub(crate) const INSERT: &str = "INSERT INTO items (writer, seq, payload) VALUES (?1, ?2, ?3)";
/// The read of the read-modify-write workload.
pub(crate) const READ_COUNTER: &str = "SELECT n FROM counter WHERE id = 1";
/// The write of the read-modify-write workload: `?1` is the value read + 1.
pub(crate) const WRITE_COUNTER: &str = "UPDATE counter SET n = ?1 WHERE id = 1";
/// 100 bytes of payload per inserted row.
pub(crate) const PAYLOAD: &str =
    "luca-bench payload: one hundred bytes of text per row, the size of a small job record.....";

/// The SQLite extended result codes a busy or locked caller sees, by name.
pub(crate) fn sqlite_code_name(code: i32) -> String {
    let name = match code {
        5 => "BUSY",
        261 => "BUSY_RECOVERY",
        517 => "BUSY_SNAPSHOT",
        773 => "BUSY_TIMEOUT",
        6 => "LOCKED",
        262 => "LOCKED_SHAREDCACHE",
        518 => "LOCKED_VTAB",
        _ => return format!("sqlite {code}"),
    };
    format!("{name}({code})")
}

/// What one cell of writers did, before it is checked against the file.
#[derive(Debug, Default)]
pub(crate) struct Drive {
    /// Operations the cell should run.
    pub(crate) planned: u64,
    /// Operations started (fewer than `planned` when the time limit stopped the cell).
    pub(crate) attempted: u64,
    /// `(writer, seq)` of every acknowledged operation.
    pub(crate) acked: Vec<(u32, u32)>,
    /// Latency in ns of every acknowledged operation, from the call to the acknowledgement.
    pub(crate) latencies: Vec<u64>,
    /// Errors returned to callers, by kind.
    pub(crate) errors: BTreeMap<String, u64>,
    /// From the start signal to the last writer's end.
    pub(crate) wall: Duration,
    /// The time limit ended the cell before every operation ran.
    pub(crate) stopped: bool,
}

/// One writer's share of a cell.
#[derive(Default)]
struct Share {
    attempted: u64,
    acked: Vec<(u32, u32)>,
    latencies: Vec<u64>,
    errors: BTreeMap<String, u64>,
    stopped: bool,
}

impl Drive {
    /// Records one finished operation.
    pub(crate) fn record(&mut self, id: (u32, u32), started: Instant, result: Result<(), String>) {
        let ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.attempted += 1;
        match result {
            Ok(()) => {
                self.acked.push(id);
                self.latencies.push(ns);
            }
            Err(kind) => *self.errors.entry(kind).or_default() += 1,
        }
    }
}

/// Runs `ops` operations on `writers` concurrent tokio tasks, writer `w` running its share
/// as `op(w, 0)`, `op(w, 1)`, … one after another. Every writer stops starting new
/// operations once `limit` has passed since the start, so a pathological system ends by
/// itself (an operation already started still runs to its end).
pub(crate) async fn drive<F, Fut>(writers: usize, ops: u64, limit: Duration, op: F) -> Drive
where
    F: Fn(u32, u32) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    let writers = writers.max(1);
    let op = Arc::new(op);
    let start = Arc::new(tokio::sync::Barrier::new(writers + 1));
    let deadline = Instant::now() + limit;
    let mut tasks = Vec::with_capacity(writers);
    for w in 0..writers {
        let share = ops / writers as u64 + u64::from((w as u64) < ops % writers as u64);
        let op = Arc::clone(&op);
        let start = Arc::clone(&start);
        tasks.push(tokio::spawn(async move {
            let w = w as u32;
            let mut mine = Share {
                latencies: Vec::with_capacity(share as usize),
                acked: Vec::with_capacity(share as usize),
                ..Share::default()
            };
            start.wait().await;
            for seq in 0..share as u32 {
                if Instant::now() >= deadline {
                    mine.stopped = true;
                    break;
                }
                let t0 = Instant::now();
                let result = op(w, seq).await;
                let ns = u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX);
                mine.attempted += 1;
                match result {
                    Ok(()) => {
                        mine.acked.push((w, seq));
                        mine.latencies.push(ns);
                    }
                    Err(kind) => *mine.errors.entry(kind).or_default() += 1,
                }
            }
            mine
        }));
    }
    start.wait().await;
    let t0 = Instant::now();
    let mut out = Drive {
        planned: ops,
        latencies: Vec::with_capacity(ops as usize),
        acked: Vec::with_capacity(ops as usize),
        ..Drive::default()
    };
    for task in tasks {
        match task.await {
            Ok(mine) => {
                out.attempted += mine.attempted;
                out.acked.extend(mine.acked);
                out.latencies.extend(mine.latencies);
                for (k, n) in mine.errors {
                    *out.errors.entry(k).or_default() += n;
                }
                out.stopped |= mine.stopped;
            }
            Err(e) => *out.errors.entry(format!("writer task: {e}")).or_default() += 1,
        }
    }
    out.wall = t0.elapsed();
    out
}

/// What the file says afterwards.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Check {
    /// Acknowledged operations whose effect is not in the file.
    pub(crate) lost: u64,
    /// Effects in the file of operations that were not acknowledged (told failure).
    pub(crate) unacked: u64,
}

/// Compares the acknowledged inserts with the `(writer, seq)` pairs found in the file.
pub(crate) fn check_insert(acked: &[(u32, u32)], present: &[(i64, i64)]) -> Check {
    let present: HashSet<(i64, i64)> = present.iter().copied().collect();
    let acked: HashSet<(i64, i64)> = acked
        .iter()
        .map(|&(w, s)| (i64::from(w), i64::from(s)))
        .collect();
    Check {
        lost: acked.difference(&present).count() as u64,
        unacked: present.difference(&acked).count() as u64,
    }
}

/// Compares the number of acknowledged increments with the counter in the file.
pub(crate) fn check_rmw(acked: u64, counter: i64) -> Check {
    let counter = u64::try_from(counter).unwrap_or(0);
    Check {
        lost: acked.saturating_sub(counter),
        unacked: counter.saturating_sub(acked),
    }
}

/// Nearest-rank percentile of sorted values (0 when empty).
pub(crate) fn percentile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// One line of the table, in the form both processes exchange.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Row {
    pub(crate) system: String,
    pub(crate) workload: String,
    pub(crate) writers: u64,
    pub(crate) planned: u64,
    pub(crate) attempted: u64,
    pub(crate) acked: u64,
    pub(crate) wall_ns: u64,
    pub(crate) p50_ns: u64,
    pub(crate) p99_ns: u64,
    pub(crate) p999_ns: u64,
    pub(crate) max_ns: u64,
    pub(crate) errors: BTreeMap<String, u64>,
    pub(crate) lost: u64,
    pub(crate) unacked: u64,
    pub(crate) stopped: bool,
    /// How the system was set up (pool size and the like).
    pub(crate) note: String,
}

impl Row {
    pub(crate) fn new(system: &str, workload: Workload, writers: usize, d: Drive, c: Check) -> Row {
        let mut lat = d.latencies;
        lat.sort_unstable();
        Row {
            system: system.to_owned(),
            workload: workload.name().to_owned(),
            writers: writers as u64,
            planned: d.planned,
            attempted: d.attempted,
            acked: d.acked.len() as u64,
            wall_ns: u64::try_from(d.wall.as_nanos()).unwrap_or(u64::MAX),
            p50_ns: percentile(&lat, 0.50),
            p99_ns: percentile(&lat, 0.99),
            p999_ns: percentile(&lat, 0.999),
            max_ns: lat.last().copied().unwrap_or(0),
            errors: d.errors,
            lost: c.lost,
            unacked: c.unacked,
            stopped: d.stopped,
            note: String::new(),
        }
    }

    /// Acknowledged operations per second of wall time.
    pub(crate) fn ops_per_sec(&self) -> f64 {
        if self.wall_ns == 0 {
            return 0.0;
        }
        self.acked as f64 * 1e9 / self.wall_ns as f64
    }

    pub(crate) fn escaped(&self) -> u64 {
        self.errors.values().sum()
    }

    /// One line: `row` then tab-separated `key=value` fields; errors as `kind:count;…`.
    pub(crate) fn to_line(&self) -> String {
        // Values may hold `=` and `:` (a field splits at its first `=`, an error at its
        // last `:`); only tabs, line ends and, in error kinds, `;` must go.
        let clean = |s: &str| s.replace(['\t', '\n', '\r'], " ");
        let errors = self
            .errors
            .iter()
            .map(|(k, n)| format!("{}:{n}", clean(k).replace(';', ",")))
            .collect::<Vec<_>>()
            .join(";");
        let mut s = String::from("row");
        let fields: [(&str, String); 16] = [
            ("system", clean(&self.system)),
            ("workload", clean(&self.workload)),
            ("writers", self.writers.to_string()),
            ("planned", self.planned.to_string()),
            ("attempted", self.attempted.to_string()),
            ("acked", self.acked.to_string()),
            ("wall_ns", self.wall_ns.to_string()),
            ("p50_ns", self.p50_ns.to_string()),
            ("p99_ns", self.p99_ns.to_string()),
            ("p999_ns", self.p999_ns.to_string()),
            ("max_ns", self.max_ns.to_string()),
            ("errors", errors),
            ("lost", self.lost.to_string()),
            ("unacked", self.unacked.to_string()),
            ("stopped", self.stopped.to_string()),
            ("note", clean(&self.note)),
        ];
        for (k, v) in fields {
            let _ = write!(s, "\t{k}={v}");
        }
        s
    }

    /// Parses a line written by [`Row::to_line`]; `None` for any other line.
    pub(crate) fn from_line(line: &str) -> Option<Row> {
        let mut parts = line.trim_end_matches(['\r', '\n']).split('\t');
        if parts.next()? != "row" {
            return None;
        }
        let mut row = Row::default();
        for field in parts {
            let (k, v) = field.split_once('=')?;
            let num = || v.parse::<u64>().ok();
            match k {
                "system" => row.system = v.to_owned(),
                "workload" => row.workload = v.to_owned(),
                "writers" => row.writers = num()?,
                "planned" => row.planned = num()?,
                "attempted" => row.attempted = num()?,
                "acked" => row.acked = num()?,
                "wall_ns" => row.wall_ns = num()?,
                "p50_ns" => row.p50_ns = num()?,
                "p99_ns" => row.p99_ns = num()?,
                "p999_ns" => row.p999_ns = num()?,
                "max_ns" => row.max_ns = num()?,
                "errors" => {
                    for e in v.split(';').filter(|e| !e.is_empty()) {
                        let (kind, n) = e.rsplit_once(':')?;
                        row.errors.insert(kind.to_owned(), n.parse().ok()?);
                    }
                }
                "lost" => row.lost = num()?,
                "unacked" => row.unacked = num()?,
                "stopped" => row.stopped = v == "true",
                "note" => row.note = v.to_owned(),
                _ => {}
            }
        }
        Some(row)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<u64> = (1..=1000).collect();
        assert_eq!(percentile(&v, 0.50), 500);
        assert_eq!(percentile(&v, 0.99), 990);
        assert_eq!(percentile(&v, 0.999), 999);
        assert_eq!(percentile(&v, 1.0), 1000);
        assert_eq!(percentile(&[], 0.5), 0);
        assert_eq!(percentile(&[7], 0.999), 7);
    }

    #[test]
    fn checks_count_lost_and_unacknowledged() {
        let c = check_insert(&[(0, 0), (0, 1), (1, 0)], &[(0, 0), (1, 0), (2, 5)]);
        assert_eq!(
            c,
            Check {
                lost: 1,
                unacked: 1
            }
        );
        assert_eq!(
            check_rmw(10, 7),
            Check {
                lost: 3,
                unacked: 0
            }
        );
        assert_eq!(
            check_rmw(10, 12),
            Check {
                lost: 0,
                unacked: 2
            }
        );
    }

    #[test]
    fn rows_round_trip_through_lines() {
        let mut row = Row {
            system: "deadpool-sqlite, pool = N".into(),
            workload: "rmw".into(),
            writers: 64,
            planned: 20_000,
            attempted: 19_000,
            acked: 1_234,
            wall_ns: 5_000_000_000,
            p50_ns: 1,
            p99_ns: 2,
            p999_ns: 3,
            max_ns: 4,
            lost: 0,
            unacked: 2,
            stopped: true,
            note: "pool.begin() = DEFERRED; max_connections: 10".into(),
            ..Row::default()
        };
        row.errors.insert("BUSY(5)".into(), 17_000);
        row.errors.insert("BUSY_SNAPSHOT(517)".into(), 766);
        row.errors.insert("sqlx: error: with a colon".into(), 1);
        assert_eq!(Row::from_line(&row.to_line()), Some(row));
        assert_eq!(Row::from_line("something else"), None);
    }
}
