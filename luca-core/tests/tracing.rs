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

#[tokio::test]
async fn db_writes_run_in_batch_spans_and_refusals_are_debug_events() {
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
    for (_, _, target, _) in seen.iter() {
        assert!(
            !target.starts_with("luca::"),
            "targets are named after the crate: {target}"
        );
    }
}
