//! The `tracing` spans and events of `Db`: targets and levels as documented. The subscriber
//! is global (the writer is its own thread): this binary holds one test.

use std::sync::{Arc, Mutex};

use luca_core::{Db, Error};
use luca_testkit::TempDb;
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

/// `(kind, level, target, name or message)` of one span or event.
type Seen = (&'static str, Level, String, String);

/// Records every span and event.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<Seen>>>);

struct Message(String);

impl tracing::field::Visit for Message {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
}

impl Subscriber for Recorder {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &Attributes<'_>) -> Id {
        let m = span.metadata();
        self.0.lock().unwrap().push((
            "span",
            *m.level(),
            m.target().to_owned(),
            m.name().to_owned(),
        ));
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut message = Message(String::new());
        event.record(&mut message);
        let m = event.metadata();
        self.0
            .lock()
            .unwrap()
            .push(("event", *m.level(), m.target().to_owned(), message.0));
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

#[luca_core::db_retry(max_retries = 20, delay_ms = 5, jitter = "none")]
fn insert(conn: &luca_core::rusqlite::Connection) -> luca_core::Result<()> {
    conn.execute("INSERT INTO t VALUES (1)", [])?;
    Ok(())
}

#[luca_core::db_retry(max_retries = 0)]
fn insert_no_retry(conn: &luca_core::rusqlite::Connection) -> luca_core::Result<()> {
    conn.execute("INSERT INTO t VALUES (2)", [])?;
    Ok(())
}

#[tokio::test]
async fn db_and_retry_spans_and_events_have_their_targets_and_levels() {
    let seen = Recorder::default();
    tracing::subscriber::set_global_default(seen.clone()).expect("the only subscriber");
    let tmp = TempDb::new();
    let db = Db::open(tmp.path()).await.unwrap();
    db.write(|c| Ok(c.execute_batch("CREATE TABLE t (v)")?))
        .await
        .unwrap();
    let err = db
        .write(|c| Ok(c.execute_batch("COMMIT")?))
        .await
        .expect_err("refused");
    assert!(matches!(err, Error::Refused { .. }), "{err:?}");
    // A #[db_retry] function that retries once, and one that gives up at once.
    let conn = luca_core::rusqlite::Connection::open(tmp.path()).unwrap();
    conn.busy_timeout(std::time::Duration::ZERO).unwrap();
    let lock = luca_testkit::WriteLock::hold(tmp.path()).unwrap();
    let release = lock.release_after(std::time::Duration::from_millis(30));
    insert(&conn).unwrap();
    release.join().unwrap().unwrap();
    let lock = luca_testkit::WriteLock::hold(tmp.path()).unwrap();
    insert_no_retry(&conn).expect_err("busy");
    drop(lock);
    db.close().await.unwrap();

    let seen = seen.0.lock().unwrap();
    let batches = seen
        .iter()
        .filter(|(kind, level, target, name)| {
            *kind == "span"
                && *level == Level::DEBUG
                && target == "luca_core::db"
                && name == "write_batch"
        })
        .count();
    assert!(batches >= 2, "one span per run of writes: {seen:#?}");
    assert!(
        seen.iter()
            .any(|(kind, level, target, msg)| *kind == "event"
                && *level == Level::DEBUG
                && target == "luca_core::db"
                && msg.contains("refused")),
        "{seen:#?}"
    );
    let retry_spans = seen
        .iter()
        .filter(|(kind, level, target, name)| {
            *kind == "span"
                && *level == Level::DEBUG
                && target == "luca_core::retry"
                && name == "db_retry"
        })
        .count();
    assert_eq!(
        retry_spans, 1,
        "one span, for the call that retried: {seen:#?}"
    );
    assert!(
        seen.iter()
            .any(|(kind, level, target, msg)| *kind == "event"
                && *level == Level::DEBUG
                && target == "luca_core::retry"
                && msg.contains("retrying")),
        "{seen:#?}"
    );
    assert!(
        seen.iter()
            .any(|(kind, level, target, msg)| *kind == "event"
                && *level == Level::WARN
                && target == "luca_core::retry"
                && msg.contains("giving up")),
        "{seen:#?}"
    );
    for (_, _, target, _) in seen.iter() {
        assert!(
            !target.starts_with("luca::"),
            "targets are named after the crate: {target}"
        );
    }
}
