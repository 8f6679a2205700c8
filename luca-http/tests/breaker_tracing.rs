//! Breaker state changes are `info` events under the target `luca_http::breaker`, for both
//! `HostBreaker` and `HostGate`. The subscriber is global: this binary holds one test.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use luca_http::{HostBreaker, HostGate};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

/// `(level, target, message)` of every event.
#[derive(Clone, Default)]
struct Events(Arc<Mutex<Vec<(Level, String, String)>>>);

struct Message(String);

impl tracing::field::Visit for Message {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
}

impl Subscriber for Events {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &Attributes<'_>) -> Id {
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
            .push((*m.level(), m.target().to_owned(), message.0));
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

#[tokio::test(start_paused = true)]
async fn trips_and_probe_verdicts_are_info_events() {
    let events = Events::default();
    tracing::subscriber::set_global_default(events.clone()).unwrap();
    let transitions = || -> Vec<String> {
        events
            .0
            .lock()
            .unwrap()
            .iter()
            .filter(|(level, target, _)| *level == Level::INFO && target == "luca_http::breaker")
            .map(|(_, _, msg)| msg.clone())
            .collect()
    };

    let b = HostBreaker::default();
    b.check("a.example").unwrap().failure(None);
    tokio::time::advance(Duration::from_secs(30)).await;
    let probe = b.check("a.example").unwrap();
    assert!(probe.is_probe());
    probe.failure(None);
    tokio::time::advance(Duration::from_secs(60)).await;
    b.check("a.example").unwrap().success();
    assert_eq!(
        transitions(),
        [
            "breaker closed -> open",
            "breaker half-open -> open",
            "breaker half-open -> closed"
        ]
    );

    let g = HostGate::default();
    g.try_acquire("b.example").unwrap().failure(None);
    tokio::time::advance(Duration::from_secs(30)).await;
    g.try_acquire("b.example").unwrap().success();
    assert_eq!(transitions().len(), 5, "{:?}", transitions());
    assert_eq!(
        transitions()[3..],
        ["breaker closed -> open", "breaker half-open -> closed"]
    );
}
