//! [`RunMetrics`]: the counters of a crawl, on `#[shared_state]` atomic counters, with a
//! consistent [`RunMetrics::snapshot`] and a table as `Display`.
//!
//! # What "consistent" means
//!
//! Each counter is exact (no update is ever lost, whatever the number of threads). Across
//! counters, a snapshot never shows an effect without its cause: every outcome counted in
//! a snapshot (a response of any status class, a timeout, a connect or body error) has its
//! request counted too, and every 429 counted has its 4xx counted. So in every snapshot
//! `outcomes() <= requests` and `too_many_requests <= status_4xx`.
//!
//! How: a request is recorded ([`RunMetrics::record_request`]) before its outcome, a 4xx
//! before its 429, and the counters are atomics with acquire/release ordering; the snapshot
//! reads the effects first and their causes after, so whatever effect it sees, the cause's
//! earlier increment is visible to the later read. No lock is taken by writers or by the
//! snapshot. The snapshot is not a single instant: requests begun while it reads may
//! appear without their outcomes (which is true: they are in flight).
//!
//! # The `metrics` facade
//!
//! With the `metrics` feature, every record also goes to the program's `metrics` recorder
//! (of every `RunMetrics` of the process together), with few, fixed labels (no URL or host):
//!
//! | metric | kind | labels |
//! |---|---|---|
//! | `luca_http_requests_total` | counter | |
//! | `luca_http_responses_total` | counter | `class` = `1xx` … `5xx` |
//! | `luca_http_too_many_requests_total` | counter | (429s, also in `class="4xx"`) |
//! | `luca_http_errors_total` | counter | `kind` = `timeout`, `connect`, `body` |
//! | `luca_http_retries_scheduled_total` | counter | |
//! | `luca_http_breaker_trips_total` | counter | |
//! | `luca_http_open_hosts` | gauge | (the last value set) |

use std::fmt;

use luca_core::shared_state;

#[shared_state]
#[derive(Debug, Default)]
struct Counters {
    #[shared(counter)]
    requests: u64,
    #[shared(counter)]
    status_1xx: u64,
    #[shared(counter)]
    status_2xx: u64,
    #[shared(counter)]
    status_3xx: u64,
    #[shared(counter)]
    status_4xx: u64,
    #[shared(counter)]
    status_5xx: u64,
    #[shared(counter)]
    too_many_requests: u64,
    #[shared(counter)]
    timeouts: u64,
    #[shared(counter)]
    connect_errors: u64,
    #[shared(counter)]
    body_errors: u64,
    #[shared(counter)]
    retries_scheduled: u64,
    #[shared(counter)]
    breaker_trips: u64,
    #[shared(counter)]
    open_hosts: u64,
}

/// The counters of a run; share it (`Arc<RunMetrics>` or a `static`) between tasks.
#[derive(Debug, Default)]
pub struct RunMetrics {
    c: Counters,
}

/// The values of [`RunMetrics`] at one [`RunMetrics::snapshot`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct MetricsSnapshot {
    /// Requests sent.
    pub requests: u64,
    /// Responses 100–199.
    pub status_1xx: u64,
    /// Responses 200–299.
    pub status_2xx: u64,
    /// Responses 300–399.
    pub status_3xx: u64,
    /// Responses 400–499 (429 included).
    pub status_4xx: u64,
    /// Responses 500–599.
    pub status_5xx: u64,
    /// Responses 429 Too Many Requests (also counted in `status_4xx`).
    pub too_many_requests: u64,
    /// Requests that timed out.
    pub timeouts: u64,
    /// Requests that could not connect.
    pub connect_errors: u64,
    /// Responses whose body could not be read.
    pub body_errors: u64,
    /// Retries scheduled.
    pub retries_scheduled: u64,
    /// Times a host's breaker opened.
    pub breaker_trips: u64,
    /// Hosts open now (a gauge).
    pub open_hosts: u64,
}

impl MetricsSnapshot {
    /// Responses with a status, of any class.
    pub fn responses(&self) -> u64 {
        self.status_1xx + self.status_2xx + self.status_3xx + self.status_4xx + self.status_5xx
    }

    /// Requests with an outcome: responses, timeouts, connect errors. (A body error
    /// follows a response, so it is not counted again.)
    pub fn outcomes(&self) -> u64 {
        self.responses() + self.timeouts + self.connect_errors
    }
}

impl RunMetrics {
    /// All counters at zero.
    pub fn new() -> Self {
        RunMetrics::default()
    }

    /// A request is about to be sent. Record it before its outcome.
    pub fn record_request(&self) {
        self.c.incr_requests();
        #[cfg(feature = "metrics")]
        metrics::counter!("luca_http_requests_total").increment(1);
    }

    /// A response with this status arrived (a status outside 100–599 counts as 5xx, the
    /// server's fault).
    pub fn record_status(&self, status: u16) {
        let class = match status {
            100..=199 => {
                self.c.incr_status_1xx();
                "1xx"
            }
            200..=299 => {
                self.c.incr_status_2xx();
                "2xx"
            }
            300..=399 => {
                self.c.incr_status_3xx();
                "3xx"
            }
            400..=499 => {
                self.c.incr_status_4xx();
                "4xx"
            }
            _ => {
                self.c.incr_status_5xx();
                "5xx"
            }
        };
        #[cfg(feature = "metrics")]
        metrics::counter!("luca_http_responses_total", "class" => class).increment(1);
        #[cfg(not(feature = "metrics"))]
        let _ = class;
        if status == 429 {
            self.c.incr_too_many_requests();
            #[cfg(feature = "metrics")]
            metrics::counter!("luca_http_too_many_requests_total").increment(1);
        }
    }

    /// A request timed out.
    pub fn record_timeout(&self) {
        self.c.incr_timeouts();
        #[cfg(feature = "metrics")]
        metrics::counter!("luca_http_errors_total", "kind" => "timeout").increment(1);
    }

    /// A request could not connect.
    pub fn record_connect_error(&self) {
        self.c.incr_connect_errors();
        #[cfg(feature = "metrics")]
        metrics::counter!("luca_http_errors_total", "kind" => "connect").increment(1);
    }

    /// A response body could not be read (after its status was recorded).
    pub fn record_body_error(&self) {
        self.c.incr_body_errors();
        #[cfg(feature = "metrics")]
        metrics::counter!("luca_http_errors_total", "kind" => "body").increment(1);
    }

    /// A retry was scheduled.
    pub fn record_retry_scheduled(&self) {
        self.c.incr_retries_scheduled();
        #[cfg(feature = "metrics")]
        metrics::counter!("luca_http_retries_scheduled_total").increment(1);
    }

    /// A host's breaker opened.
    pub fn record_breaker_trip(&self) {
        self.c.incr_breaker_trips();
        #[cfg(feature = "metrics")]
        metrics::counter!("luca_http_breaker_trips_total").increment(1);
    }

    /// Sets the open-hosts gauge (e.g. from [`HostBreaker::open_hosts`](crate::breaker::HostBreaker::open_hosts)).
    pub fn set_open_hosts(&self, n: u64) {
        self.c.set_open_hosts(n);
        #[cfg(feature = "metrics")]
        metrics::gauge!("luca_http_open_hosts").set(n as f64);
    }

    /// The counters now; see the module docs for what is guaranteed across counters.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let c = &self.c;
        // Effects before causes: 429 before 4xx, outcomes before requests.
        let too_many_requests = c.too_many_requests();
        let body_errors = c.body_errors();
        let status_1xx = c.status_1xx();
        let status_2xx = c.status_2xx();
        let status_3xx = c.status_3xx();
        let status_4xx = c.status_4xx();
        let status_5xx = c.status_5xx();
        let timeouts = c.timeouts();
        let connect_errors = c.connect_errors();
        let requests = c.requests();
        MetricsSnapshot {
            requests,
            status_1xx,
            status_2xx,
            status_3xx,
            status_4xx,
            status_5xx,
            too_many_requests,
            timeouts,
            connect_errors,
            body_errors,
            retries_scheduled: c.retries_scheduled(),
            breaker_trips: c.breaker_trips(),
            open_hosts: c.open_hosts(),
        }
    }
}

impl fmt::Display for MetricsSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rows: [(&str, u64); 13] = [
            ("requests", self.requests),
            ("responses 1xx", self.status_1xx),
            ("responses 2xx", self.status_2xx),
            ("responses 3xx", self.status_3xx),
            ("responses 4xx", self.status_4xx),
            ("  of which 429", self.too_many_requests),
            ("responses 5xx", self.status_5xx),
            ("timeouts", self.timeouts),
            ("connect errors", self.connect_errors),
            ("body errors", self.body_errors),
            ("retries scheduled", self.retries_scheduled),
            ("breaker trips", self.breaker_trips),
            ("open hosts", self.open_hosts),
        ];
        let width = rows
            .iter()
            .map(|(_, v)| v.to_string().len())
            .max()
            .unwrap_or(1)
            .max(5);
        writeln!(f, "{:<18} {:>width$}", "metric", "count")?;
        writeln!(f, "{:-<18} {:->width$}", "", "")?;
        for (name, v) in rows {
            writeln!(f, "{name:<18} {v:>width$}")?;
        }
        Ok(())
    }
}

impl fmt::Display for RunMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.snapshot().fmt(f)
    }
}
