//! What the job found, as terminal tables and histograms and as one JSON document.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use super::systems::{RunOutcome, System, Workload};

/// Upper bounds of the latency histogram's buckets, in microseconds (the last bucket has
/// none).
pub(crate) const BUCKETS_US: [u64; 5] = [100, 1_000, 10_000, 100_000, 1_000_000];
const BUCKET_LABELS: [&str; 6] = ["<100µs", "<1ms", "<10ms", "<100ms", "<1s", "≥1s"];

/// The whole report (`--json` prints it).
#[derive(Debug, Serialize)]
pub(crate) struct Report {
    pub(crate) settings: Settings,
    pub(crate) checks: Vec<CheckRow>,
    /// Upper bounds of `histogram` buckets in every row, in µs; one more bucket holds the rest.
    pub(crate) histogram_bounds_us: Vec<u64>,
    pub(crate) workloads: Vec<WorkloadReport>,
    /// Why the job fails: failed checks, luca rows with escaped errors or lost writes.
    pub(crate) failures: Vec<String>,
    pub(crate) passed: bool,
}

#[derive(Debug, Serialize)]
pub(crate) struct Settings {
    pub(crate) writers: Vec<u32>,
    pub(crate) ops: u64,
    pub(crate) duration_secs: f64,
    pub(crate) db: String,
}

#[derive(Debug, Serialize)]
pub(crate) struct CheckRow {
    pub(crate) name: &'static str,
    pub(crate) passed: bool,
    pub(crate) detail: String,
}

#[derive(Debug, Serialize)]
pub(crate) struct WorkloadReport {
    pub(crate) workload: &'static str,
    pub(crate) title: &'static str,
    /// One connection, one thread, the same operations.
    pub(crate) ceiling: Row,
    pub(crate) rows: Vec<Row>,
}

/// One run of one system at one writer count.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Row {
    /// `serial_ceiling`, `naive`, `original`, `db_retry_local`, `db_no_group_commit`, `db`.
    pub(crate) system: String,
    pub(crate) label: &'static str,
    pub(crate) luca: bool,
    pub(crate) writers: usize,
    pub(crate) attempted: u64,
    pub(crate) ok: u64,
    pub(crate) ops_per_sec: f64,
    pub(crate) ratio_to_ceiling: f64,
    pub(crate) p50_us: u64,
    pub(crate) p99_us: u64,
    pub(crate) max_us: u64,
    /// Calls that returned an error, by SQLite's symbolic code.
    pub(crate) escaped_errors: BTreeMap<String, u64>,
    pub(crate) escaped_total: u64,
    /// Acknowledged `Ok`, absent from the file.
    pub(crate) lost_writes: u64,
    /// Answered with an error, present in the file.
    pub(crate) phantom_writes: u64,
    pub(crate) elapsed_secs: f64,
    /// The time bound stopped writers before every operation ran.
    pub(crate) stopped_by_time_bound: bool,
    pub(crate) histogram: Vec<u64>,
}

impl Row {
    pub(crate) fn new(
        system: String,
        label: &'static str,
        luca: bool,
        writers: usize,
        outcome: &RunOutcome,
        ceiling_ops_per_sec: Option<f64>,
    ) -> Row {
        let secs = outcome.elapsed.as_secs_f64().max(1e-9);
        let ops_per_sec = outcome.ok as f64 / secs;
        let lat = &outcome.latencies;
        let mut histogram = vec![0u64; BUCKETS_US.len() + 1];
        for l in lat {
            let us = l.as_micros() as u64;
            let i = BUCKETS_US
                .iter()
                .position(|&b| us < b)
                .unwrap_or(BUCKETS_US.len());
            histogram[i] += 1;
        }
        Row {
            system,
            label,
            luca,
            writers,
            attempted: lat.len() as u64,
            ok: outcome.ok,
            ops_per_sec,
            ratio_to_ceiling: match ceiling_ops_per_sec {
                Some(c) if c > 0.0 => ops_per_sec / c,
                Some(_) => 0.0,
                None => 1.0,
            },
            p50_us: percentile(lat, 50.0),
            p99_us: percentile(lat, 99.0),
            max_us: lat.last().map_or(0, |d| d.as_micros() as u64),
            escaped_total: outcome.escaped(),
            escaped_errors: outcome.errors.clone(),
            lost_writes: outcome.lost,
            phantom_writes: outcome.phantom,
            elapsed_secs: secs,
            stopped_by_time_bound: outcome.bounded,
            histogram,
        }
    }

    pub(crate) fn for_system(
        system: System,
        writers: usize,
        outcome: &RunOutcome,
        ceiling_ops_per_sec: f64,
    ) -> Row {
        let key = serde_json::to_value(system)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        Row::new(
            key,
            system.label(),
            system.is_luca(),
            writers,
            outcome,
            Some(ceiling_ops_per_sec),
        )
    }

    /// Why a luca row fails the job, if it does.
    pub(crate) fn failure(&self, workload: Workload) -> Option<String> {
        if !self.luca
            || (self.escaped_total == 0 && self.lost_writes == 0 && self.phantom_writes == 0)
        {
            return None;
        }
        Some(format!(
            "{}, {}, {} writers: {} escaped error(s) ({}), {} lost write(s), {} phantom write(s)",
            self.label,
            workload.key(),
            self.writers,
            self.escaped_total,
            errors_text(&self.escaped_errors),
            self.lost_writes,
            self.phantom_writes
        ))
    }
}

/// The nearest-rank percentile of sorted latencies, in µs (0 when there are none).
pub(crate) fn percentile(sorted: &[Duration], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1].as_micros() as u64
}

/// `850µs`, `12.3ms`, `3.10s`.
pub(crate) fn fmt_us(us: u64) -> String {
    match us {
        0..1_000 => format!("{us}µs"),
        1_000..10_000 => format!("{:.2}ms", us as f64 / 1e3),
        10_000..1_000_000 => format!("{:.1}ms", us as f64 / 1e3),
        _ => format!("{:.2}s", us as f64 / 1e6),
    }
}

/// `41,203`.
pub(crate) fn fmt_count(n: f64) -> String {
    let n = n.round().max(0.0) as u64;
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `BUSY 1234, BUSY_SNAPSHOT 3`, or `-`.
fn errors_text(errors: &BTreeMap<String, u64>) -> String {
    if errors.is_empty() {
        return "-".to_owned();
    }
    let mut parts: Vec<(&String, &u64)> = errors.iter().collect();
    parts.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    parts
        .iter()
        .map(|(code, n)| format!("{} {n}", code.trim_start_matches("SQLITE_")))
        .collect::<Vec<_>>()
        .join(", ")
}

const HEADER: [&str; 10] = [
    "system",
    "writers",
    "ok",
    "ops/s",
    "×ceiling",
    "p50",
    "p99",
    "max",
    "lost",
    "escaped errors",
];

fn cells(row: &Row) -> [String; 10] {
    [
        row.label.to_owned(),
        row.writers.to_string(),
        format!(
            "{}{}",
            fmt_count(row.ok as f64),
            if row.stopped_by_time_bound { "*" } else { "" }
        ),
        fmt_count(row.ops_per_sec),
        format!("{:.2}", row.ratio_to_ceiling),
        fmt_us(row.p50_us),
        fmt_us(row.p99_us),
        fmt_us(row.max_us),
        if row.phantom_writes > 0 {
            format!("{} (+{} phantom)", row.lost_writes, row.phantom_writes)
        } else {
            row.lost_writes.to_string()
        },
        errors_text(&row.escaped_errors),
    ]
}

/// One table: the ceiling first, then each writer count's rows, system by system.
pub(crate) fn table(w: &WorkloadReport, ops: u64) -> String {
    let mut rows = vec![cells(&w.ceiling)];
    let mut group_starts = vec![];
    let mut last_writers = None;
    for row in &w.rows {
        if last_writers != Some(row.writers) {
            group_starts.push(rows.len());
            last_writers = Some(row.writers);
        }
        rows.push(cells(row));
    }
    let mut widths: Vec<usize> = HEADER.iter().map(|h| h.chars().count()).collect();
    for r in &rows {
        for (width, c) in widths.iter_mut().zip(r) {
            *width = (*width).max(c.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut s = String::from(" ");
        for (i, (c, width)) in cells.iter().zip(&widths).enumerate() {
            let pad = width.saturating_sub(c.chars().count());
            // The system name and the error list read left-aligned, numbers right-aligned.
            if i == 0 || i == cells.len() - 1 {
                s.push(' ');
                s.push_str(c);
                if i != cells.len() - 1 {
                    s.push_str(&" ".repeat(pad));
                }
            } else {
                s.push_str(&" ".repeat(pad + 2));
                s.push_str(c);
            }
        }
        s.trim_end().to_owned()
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n{} — {ops} operations per run; serial ceiling {} ops/s (one connection, one thread)",
        w.title,
        fmt_count(w.ceiling.ops_per_sec)
    );
    let header: Vec<String> = HEADER.iter().map(|h| (*h).to_owned()).collect();
    let header = line(&header);
    let _ = writeln!(out, "{header}");
    let _ = writeln!(
        out,
        " {}",
        "─".repeat(header.chars().count().saturating_sub(1))
    );
    for (i, r) in rows.iter().enumerate() {
        if group_starts.contains(&i) && i > 1 {
            let _ = writeln!(out);
        }
        let _ = writeln!(out, "{}", line(r));
    }
    out
}

/// One line per system: the share of calls in each latency bucket, at the largest writer
/// count of the workload.
pub(crate) fn histograms(w: &WorkloadReport) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let Some(writers) = w.rows.iter().map(|r| r.writers).max() else {
        return String::new();
    };
    let rows: Vec<&Row> = w.rows.iter().filter(|r| r.writers == writers).collect();
    let name_width = rows
        .iter()
        .map(|r| r.label.chars().count())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    let _ = write!(
        out,
        "\n{} latency, {writers} writers: share of calls per bucket\n {}",
        w.workload,
        " ".repeat(name_width + 1)
    );
    for label in BUCKET_LABELS {
        let _ = write!(out, "{label:>8}");
    }
    let _ = writeln!(out);
    for row in rows {
        let total: u64 = row.histogram.iter().sum();
        let _ = write!(out, "  {:<name_width$}", row.label);
        for &n in &row.histogram {
            let cell = if n == 0 || total == 0 {
                "·".to_owned()
            } else {
                let share = n as f64 / total as f64;
                let bar =
                    BARS[((share * BARS.len() as f64).ceil() as usize).clamp(1, BARS.len()) - 1];
                if share < 0.01 {
                    format!("{bar} <1%")
                } else {
                    format!("{bar} {:.0}%", share * 100.0)
                }
            };
            let _ = write!(out, "{cell:>8}");
        }
        let _ = writeln!(out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(ok: u64, busy: u64, lost: u64) -> RunOutcome {
        let mut errors = BTreeMap::new();
        if busy > 0 {
            errors.insert("SQLITE_BUSY".to_owned(), busy);
        }
        RunOutcome {
            ok,
            errors,
            lost,
            phantom: 0,
            elapsed: Duration::from_secs(1),
            latencies: (1..=ok + busy).map(Duration::from_micros).collect(),
            bounded: false,
        }
    }

    #[test]
    fn only_luca_rows_with_escaped_errors_or_lost_writes_fail_the_job() {
        let w = Workload::Insert;
        let clean = Row::for_system(System::Db, 4, &outcome(10, 0, 0), 100.0);
        assert_eq!(clean.failure(w), None);
        let lost = Row::for_system(System::DbNoGroupCommit, 4, &outcome(10, 0, 1), 100.0);
        let failure = lost.failure(w).expect("a lost write fails the job");
        assert!(failure.contains("1 lost write"), "{failure}");
        let escaped = Row::for_system(System::DbRetryLocal, 4, &outcome(9, 1, 0), 100.0);
        let failure = escaped.failure(w).expect("an escaped error fails the job");
        assert!(failure.contains("BUSY 1"), "{failure}");
        // The rows that show why luca exists are expected to do both.
        for system in [System::Naive, System::Original] {
            let row = Row::for_system(system, 4, &outcome(5, 5, 3), 100.0);
            assert_eq!(row.failure(w), None, "{system:?}");
        }
    }

    #[test]
    fn rows_compute_rates_percentiles_and_histograms() {
        let row = Row::for_system(System::Db, 2, &outcome(100, 0, 0), 50.0);
        assert_eq!(row.system, "db");
        assert_eq!(row.ops_per_sec, 100.0);
        assert_eq!(row.ratio_to_ceiling, 2.0);
        assert_eq!((row.p50_us, row.p99_us, row.max_us), (50, 99, 100));
        assert_eq!(row.histogram, vec![99, 1, 0, 0, 0, 0]);
        assert_eq!(percentile(&[], 99.0), 0);
        assert_eq!(fmt_count(1234567.4), "1,234,567");
        assert_eq!(fmt_us(999), "999µs");
        assert_eq!(fmt_us(12_345), "12.3ms");
        assert_eq!(fmt_us(3_100_000), "3.10s");
    }
}
