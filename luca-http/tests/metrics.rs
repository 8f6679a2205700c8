//! RunMetrics: totals exact under concurrency, snapshots never show an outcome without
//! its request.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use luca_http::RunMetrics;

const THREADS: u64 = 8;
const N: u64 = 200_000;

#[test]
fn totals_are_exact_and_snapshots_consistent_under_concurrency() {
    let m = Arc::new(RunMetrics::new());
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let (m, done) = (m.clone(), done.clone());
        std::thread::spawn(move || {
            let mut checked = 0u64;
            // Bounded: stops when the writers are done, or after 10 million snapshots.
            while !done.load(Ordering::SeqCst) && checked < 10_000_000 {
                let s = m.snapshot();
                assert!(s.outcomes() <= s.requests, "{s:?}");
                assert!(s.too_many_requests <= s.status_4xx, "{s:?}");
                checked += 1;
            }
            checked
        })
    };
    let writers: Vec<_> = (0..THREADS)
        .map(|t| {
            let m = m.clone();
            std::thread::spawn(move || {
                for i in 0..N {
                    m.record_request();
                    match (i + t) % 8 {
                        0 => m.record_status(200),
                        1 => m.record_status(301),
                        2 => m.record_status(404),
                        3 => m.record_status(429),
                        4 => m.record_status(503),
                        5 => m.record_timeout(),
                        6 => m.record_connect_error(),
                        _ => {
                            m.record_status(100);
                            m.record_body_error();
                        }
                    }
                    if i % 4 == 0 {
                        m.record_retry_scheduled();
                    }
                }
                m.record_breaker_trip();
            })
        })
        .collect();
    for w in writers {
        w.join().expect("writer");
    }
    done.store(true, Ordering::SeqCst);
    let checked = reader.join().expect("reader");
    assert!(checked > 0);
    let s = m.snapshot();
    let per = THREADS * N / 8;
    assert_eq!(s.requests, THREADS * N);
    assert_eq!(s.status_1xx, per);
    assert_eq!(s.status_2xx, per);
    assert_eq!(s.status_3xx, per);
    assert_eq!(s.status_4xx, 2 * per);
    assert_eq!(s.too_many_requests, per);
    assert_eq!(s.status_5xx, per);
    assert_eq!(s.timeouts, per);
    assert_eq!(s.connect_errors, per);
    assert_eq!(s.body_errors, per);
    assert_eq!(s.retries_scheduled, THREADS * N / 4);
    assert_eq!(s.breaker_trips, THREADS);
    assert_eq!(s.outcomes(), s.requests);
}

#[test]
fn display_is_a_table() {
    let m = RunMetrics::new();
    m.record_request();
    m.record_status(429);
    m.set_open_hosts(3);
    let text = m.to_string();
    let lines: Vec<_> = text.lines().collect();
    assert_eq!(lines.len(), 15, "{text}");
    assert!(
        lines[0].starts_with("metric") && lines[0].ends_with("count"),
        "{text}"
    );
    assert!(lines.contains(&"requests               1"), "{text}");
    assert!(lines.contains(&"  of which 429         1"), "{text}");
    assert!(lines.contains(&"open hosts             3"), "{text}");
    // Every row has the same width.
    assert!(lines.iter().all(|l| l.len() == lines[0].len()), "{text}");
}
