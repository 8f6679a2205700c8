//! `Db` figures through the `metrics` facade (feature `metrics`). The recorder is global:
//! this binary holds one test, so no other `Db` reports into it.

#[cfg(feature = "metrics")]
mod facade {
    use std::collections::HashMap;
    use std::time::Duration;

    use luca_core::retry::BusyCode;
    use luca_core::{Db, Error};
    use luca_testkit::{TempDb, WriteLock};
    use metrics_util::MetricKind;
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    /// `name{label=value,…}` → value, from one snapshot (which resets the recorder).
    fn figures(snapshotter: &metrics_util::debugging::Snapshotter) -> HashMap<String, DebugValue> {
        snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .map(|(key, _, _, value)| {
                let k = key.key();
                let mut labels: Vec<String> = k
                    .labels()
                    .map(|l| format!("{}={}", l.key(), l.value()))
                    .collect();
                labels.sort();
                let kind = match key.kind() {
                    MetricKind::Counter => "counter",
                    MetricKind::Gauge => "gauge",
                    MetricKind::Histogram => "histogram",
                };
                (
                    format!("{kind} {}{{{}}}", k.name(), labels.join(",")),
                    value,
                )
            })
            .collect()
    }

    fn counter(f: &HashMap<String, DebugValue>, key: &str) -> u64 {
        match f.get(key) {
            Some(DebugValue::Counter(n)) => *n,
            other => panic!("{key}: {other:?} in {f:#?}"),
        }
    }

    fn samples(f: &HashMap<String, DebugValue>, key: &str) -> Vec<f64> {
        match f.get(key) {
            Some(DebugValue::Histogram(v)) => v.iter().map(|x| x.into_inner()).collect(),
            other => panic!("{key}: {other:?} in {f:#?}"),
        }
    }

    #[luca_core::db_retry(max_retries = 20, delay_ms = 5, jitter = "none")]
    fn insert(conn: &luca_core::rusqlite::Connection) -> luca_core::Result<()> {
        conn.execute("INSERT INTO t VALUES (200)", [])?;
        Ok(())
    }

    #[luca_core::db_retry(max_retries = 0)]
    fn insert_no_retry(conn: &luca_core::rusqlite::Connection) -> luca_core::Result<()> {
        conn.execute("INSERT INTO t VALUES (300)", [])?;
        Ok(())
    }

    /// The only test of this binary that touches the global recorder.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn db_reports_its_figures_to_the_installed_recorder() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder
            .install()
            .expect("the first recorder of this process");

        let tmp = TempDb::new();
        let db = Db::builder(tmp.path())
            .busy_timeout(Duration::ZERO)
            .wal_autocheckpoint(1)
            .build()
            .await
            .unwrap();
        db.write(|c| Ok(c.execute_batch("CREATE TABLE t (v INTEGER NOT NULL)")?))
            .await
            .unwrap();
        let tasks: Vec<_> = (0..40)
            .map(|i| {
                let db = db.clone();
                tokio::spawn(async move {
                    db.write(move |c| Ok(c.execute("INSERT INTO t VALUES (?1)", [i])?))
                        .await
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        // One write that fails (NOT NULL): outcome "error".
        let err = db
            .write(|c| Ok(c.execute("INSERT INTO t VALUES (NULL)", [])?))
            .await
            .expect_err("NOT NULL");
        assert!(matches!(err, Error::Sqlite(_)), "{err:?}");
        // A busy error from another process's lock: counted by code, then the write
        // commits once the lock is gone.
        let lock = WriteLock::hold(tmp.path()).unwrap();
        let release = lock.release_after(Duration::from_millis(50));
        db.write(|c| Ok(c.execute("INSERT INTO t VALUES (100)", [])?))
            .await
            .unwrap();
        release.join().unwrap().unwrap();
        // A #[db_retry] function that meets a held lock once, then recovers; and one that
        // gives up.
        let conn = luca_core::rusqlite::Connection::open(tmp.path()).unwrap();
        conn.busy_timeout(Duration::ZERO).unwrap();
        let lock = WriteLock::hold(tmp.path()).unwrap();
        let release = lock.release_after(Duration::from_millis(30));
        insert(&conn).unwrap();
        release.join().unwrap().unwrap();
        let lock = WriteLock::hold(tmp.path()).unwrap();
        insert_no_retry(&conn).expect_err("busy, no retries");
        drop(lock);
        db.close().await.unwrap();
        let stats = db.stats();

        let f = figures(&snapshotter);
        assert_eq!(
            counter(&f, "counter luca_db_commits_total{}"),
            stats.commits
        );
        assert_eq!(
            counter(&f, "counter luca_db_writes_total{outcome=ok}"),
            stats.writes_ok
        );
        assert_eq!(stats.writes_ok, 42, "{stats:?}");
        assert_eq!(
            counter(&f, "counter luca_db_writes_total{outcome=error}"),
            1
        );
        let latency = samples(&f, "histogram luca_db_write_latency_seconds{}");
        assert_eq!(latency.len(), 43, "one latency per answered write");
        assert!(
            latency.iter().all(|s| *s >= 0.0 && *s < 60.0),
            "{latency:?}"
        );
        let groups = samples(&f, "histogram luca_db_group_size{}");
        assert_eq!(groups.len() as u64, stats.commits);
        assert_eq!(groups.iter().sum::<f64>() as u64, stats.writes_ok);
        let waits = samples(&f, "histogram luca_db_lock_wait_seconds{}");
        assert_eq!(waits.len() as u64, stats.lock_wait_ns.count);
        let busy = counter(&f, "counter luca_db_busy_total{code=SQLITE_BUSY}");
        assert!(busy >= 1, "the held lock was met: {f:#?}");
        assert_eq!(busy, stats.busy_total());
        let checkpoints = f
            .iter()
            .filter(|(k, _)| k.starts_with("counter luca_db_checkpoints_total"))
            .map(|(k, _)| counter(&f, k))
            .sum::<u64>();
        assert_eq!(checkpoints, stats.checkpoints + stats.inline_checkpoints);
        match f.get("gauge luca_db_queue_depth{}") {
            Some(DebugValue::Gauge(depth)) => assert_eq!(depth.into_inner(), 0.0),
            other => panic!("queue depth: {other:?}"),
        }
        let names: std::collections::BTreeSet<&str> = f
            .keys()
            .map(|k| {
                k.split_whitespace()
                    .nth(1)
                    .unwrap()
                    .split('{')
                    .next()
                    .unwrap()
            })
            .collect();
        for name in &names {
            assert!(
                name.starts_with("luca_db_") || name.starts_with("luca_retry_"),
                "unexpected metric {name}"
            );
        }
        // The retry layer's figures match its own counters (the Db's writer retries count
        // there too: it runs the same schedule).
        let retry = luca_core::metrics().snapshot();
        assert_eq!(
            counter(&f, "counter luca_retry_attempts_total{code=SQLITE_BUSY}"),
            retry.busy_for(BusyCode::Busy)
        );
        assert_eq!(
            counter(&f, "counter luca_retry_calls_total{outcome=recovered}"),
            retry.calls_recovered
        );
        assert!(retry.calls_recovered >= 1, "{retry:?}");
        assert_eq!(
            counter(&f, "counter luca_retry_calls_total{outcome=gave_up}"),
            retry.calls_gave_up
        );
        assert_eq!(retry.calls_gave_up, 1, "{retry:?}");
        let backoffs = samples(&f, "histogram luca_retry_backoff_seconds{}");
        assert_eq!(backoffs.len() as u64, retry.retries());
        // No label carries a path, a URL or a host.
        for key in f.keys() {
            assert!(!key.contains('/'), "{key}");
        }
    }
}
