//! A downstream crate's view of luca-core's ecosystem features.

use luca_core::Db;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_metrics_and_serde_from_outside_the_workspace() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().unwrap();
    let dir = tempfile::tempdir().unwrap();

    // deadpool-sqlite, configured by luca.
    let pool = luca_core::deadpool::pool(dir.path().join("pool.db")).unwrap();
    let conn = pool.get().await.unwrap();
    let (mode, sync, fk): (String, i64, i64) = conn
        .interact(|c| {
            Ok::<_, luca_core::rusqlite::Error>((
                c.query_row("PRAGMA journal_mode", [], |r| r.get(0))?,
                c.query_row("PRAGMA synchronous", [], |r| r.get(0))?,
                c.query_row("PRAGMA foreign_keys", [], |r| r.get(0))?,
            ))
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!((mode.as_str(), sync, fk), ("wal", 1, 1));

    // Db figures in the installed recorder.
    let db = Db::open(dir.path().join("db.db")).await.unwrap();
    db.write(|c| Ok(c.execute_batch("CREATE TABLE t (v); INSERT INTO t VALUES (1);")?))
        .await
        .unwrap();
    db.write(|c| Ok(c.execute("INSERT INTO t VALUES (2)", [])?))
        .await
        .unwrap();
    db.close().await.unwrap();
    let stats = db.stats();
    let figures = snapshotter.snapshot().into_vec();
    let find = |name: &str| {
        figures
            .iter()
            .find(|(k, _, _, _)| k.key().name() == name)
            .map(|(_, _, _, v)| v)
    };
    assert_eq!(
        find("luca_db_commits_total"),
        Some(&DebugValue::Counter(stats.commits))
    );
    match find("luca_db_write_latency_seconds") {
        Some(DebugValue::Histogram(samples)) => assert_eq!(samples.len(), 2),
        other => panic!("write latency: {other:?}"),
    }

    // DbStats as JSON.
    let json = serde_json::to_string(&stats).unwrap();
    let back: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(back["writes_ok"], 2);
}
