//! `RunMetrics` through the `metrics` facade (feature `metrics`) and as JSON (feature
//! `serde`). The recorder is global: this binary holds one test.
#![cfg(all(feature = "metrics", feature = "serde"))]

use std::collections::HashMap;

use luca_http::RunMetrics;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};

#[test]
fn run_metrics_reach_the_recorder_with_low_cardinality_labels_and_serialize() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().unwrap();

    let m = RunMetrics::new();
    for status in [200, 200, 301, 404, 429, 503, 700] {
        m.record_request();
        m.record_status(status);
    }
    m.record_request();
    m.record_timeout();
    m.record_request();
    m.record_connect_error();
    m.record_body_error();
    m.record_retry_scheduled();
    m.record_breaker_trip();
    m.set_open_hosts(3);

    let f: HashMap<String, DebugValue> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(k, _, _, v)| {
            let key = k.key();
            let labels: Vec<String> = key
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            (format!("{}{{{}}}", key.name(), labels.join(",")), v)
        })
        .collect();
    let counter = |k: &str| match f.get(k) {
        Some(DebugValue::Counter(n)) => *n,
        other => panic!("{k}: {other:?} in {f:#?}"),
    };
    let s = m.snapshot();
    assert_eq!(counter("luca_http_requests_total{}"), s.requests);
    assert_eq!(s.requests, 9);
    assert_eq!(
        counter("luca_http_responses_total{class=2xx}"),
        s.status_2xx
    );
    assert_eq!(
        counter("luca_http_responses_total{class=3xx}"),
        s.status_3xx
    );
    assert_eq!(
        counter("luca_http_responses_total{class=4xx}"),
        s.status_4xx
    );
    assert_eq!(
        counter("luca_http_responses_total{class=5xx}"),
        s.status_5xx
    );
    assert_eq!(s.status_5xx, 2, "503 and the out-of-range 700");
    assert_eq!(counter("luca_http_too_many_requests_total{}"), 1);
    assert_eq!(counter("luca_http_errors_total{kind=timeout}"), 1);
    assert_eq!(counter("luca_http_errors_total{kind=connect}"), 1);
    assert_eq!(counter("luca_http_errors_total{kind=body}"), 1);
    assert_eq!(counter("luca_http_retries_scheduled_total{}"), 1);
    assert_eq!(counter("luca_http_breaker_trips_total{}"), 1);
    match f.get("luca_http_open_hosts{}") {
        Some(DebugValue::Gauge(v)) => assert_eq!(v.into_inner(), 3.0),
        other => panic!("open hosts: {other:?}"),
    }
    for key in f.keys() {
        assert!(key.starts_with("luca_http_"), "{key}");
        assert!(!key.contains('/') && !key.contains("127.0.0.1"), "{key}");
    }

    let json: serde_json::Value = serde_json::to_value(s).unwrap();
    assert_eq!(json["requests"], 9);
    assert_eq!(json["status_2xx"], 2);
    assert_eq!(json["too_many_requests"], 1);
}
