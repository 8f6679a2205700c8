//! The `metrics` recorder of the "luca Db + metrics" row: a real Prometheus recorder
//! (metrics-exporter-prometheus, the one most programs install), switched on only while that
//! row runs. Every other row sees the facade with no recorder behind it (each call returns a
//! no-op handle), which is what a program without a recorder pays.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

/// A Prometheus recorder behind an on/off switch.
pub(crate) struct Switched {
    on: Arc<AtomicBool>,
    inner: PrometheusRecorder,
}

/// Turns the recorder on and off, and renders what it recorded.
#[derive(Clone)]
pub(crate) struct Switch {
    on: Arc<AtomicBool>,
    handle: PrometheusHandle,
}

impl Switch {
    pub(crate) fn set(&self, on: bool) {
        self.on.store(on, Ordering::SeqCst);
    }

    /// The Prometheus text of everything recorded so far.
    pub(crate) fn render(&self) -> String {
        self.handle.render()
    }
}

/// Installs the switched recorder (off) as the process's global recorder.
pub(crate) fn install() -> Result<Switch, String> {
    let inner = PrometheusBuilder::new().build_recorder();
    let on = Arc::new(AtomicBool::new(false));
    let switch = Switch {
        on: Arc::clone(&on),
        handle: inner.handle(),
    };
    metrics::set_global_recorder(Switched { on, inner }).map_err(|e| e.to_string())?;
    Ok(switch)
}

impl Recorder for Switched {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_counter(key, unit, description);
    }
    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_gauge(key, unit, description);
    }
    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_histogram(key, unit, description);
    }
    fn register_counter(&self, key: &Key, metadata: &Metadata<'_>) -> Counter {
        if self.on.load(Ordering::Relaxed) {
            self.inner.register_counter(key, metadata)
        } else {
            Counter::noop()
        }
    }
    fn register_gauge(&self, key: &Key, metadata: &Metadata<'_>) -> Gauge {
        if self.on.load(Ordering::Relaxed) {
            self.inner.register_gauge(key, metadata)
        } else {
            Gauge::noop()
        }
    }
    fn register_histogram(&self, key: &Key, metadata: &Metadata<'_>) -> Histogram {
        if self.on.load(Ordering::Relaxed) {
            self.inner.register_histogram(key, metadata)
        } else {
            Histogram::noop()
        }
    }
}
