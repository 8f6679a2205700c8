//! `DbStats` as JSON (feature `serde`).

#[cfg(feature = "serde")]
#[tokio::test]
async fn db_stats_serialize_to_json_with_named_busy_codes() {
    let tmp = luca_testkit::TempDb::new();
    let db = luca_core::Db::open(tmp.path()).await.unwrap();
    db.write(|c| Ok(c.execute_batch("CREATE TABLE t (v); INSERT INTO t VALUES (1)")?))
        .await
        .unwrap();
    let stats = db.stats();
    let json: serde_json::Value = serde_json::to_value(&stats).unwrap();
    assert_eq!(json["writes_ok"], stats.writes_ok);
    assert_eq!(json["commits"], stats.commits);
    assert_eq!(json["write_latency_ns"]["count"], 1);
    assert_eq!(json["write_latency_ns"]["max"], stats.write_latency_ns.max);
    let busy = json["busy_by_code"].as_object().expect("a map");
    assert_eq!(busy.len(), luca_core::retry::BusyCode::COUNT);
    assert_eq!(busy["SQLITE_BUSY_SNAPSHOT"], 0);
    db.close().await.unwrap();
}

#[test]
fn retry_metrics_serialize_with_named_codes_and_seconds() {
    let snapshot = luca_core::metrics().snapshot();
    let json: serde_json::Value = serde_json::to_value(snapshot).unwrap();
    let busy = json["busy_by_code"].as_object().expect("a map");
    assert_eq!(busy.len(), luca_core::retry::BusyCode::COUNT);
    assert!(busy.contains_key("SQLITE_BUSY"), "{json}");
    assert!(json["retries_by_code"].is_object(), "{json}");
    assert!(json["slept_seconds"].is_f64(), "{json}");
    assert_eq!(json["calls_gave_up"], snapshot.calls_gave_up);
}
