//! Logging and, when configured, tracing. Log lines go to stderr: pretty on a terminal, JSON
//! lines otherwise (or as `LOG_FORMAT` says). With `OTEL_EXPORTER_OTLP_ENDPOINT` set, the
//! spans of every hop a change makes also leave the process over OTLP/HTTP ([`export`]),
//! joined to the W3C trace the change carries (see [`crate::trace`]).

mod export;

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use tracing::{Level, Span};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, fmt};

/// Set once, by [`init`], when spans are exported.
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Are spans exported? The hops that exist only for tracing ([`hop`]) ask this first.
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// A span made only while spans are exported, `Span::none()` otherwise: the spans that
/// exist for the trace alone (job publish, apply per job, event publish, SSE send) cost
/// one atomic load when tracing is off.
pub fn hop(make: impl FnOnce() -> Span) -> Span {
    if exporting() { make() } else { Span::none() }
}

/// What [`init`] started; [`Telemetry::shutdown`] sends the spans still buffered.
#[must_use = "call `shutdown` before exiting, or buffered spans are lost"]
pub struct Telemetry {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Telemetry {
    /// Export the spans still buffered and stop the exporter (bounded by the exporter's
    /// timeout). Call it once the role has returned.
    pub async fn shutdown(self) {
        let Some(provider) = self.provider else {
            return;
        };
        // The batch processor's thread hands each export to this runtime: wait on a
        // blocking thread so the runtime stays free to run it.
        match tokio::task::spawn_blocking(move || provider.shutdown()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "flushing spans at shutdown"),
            Err(e) => tracing::warn!(error = %e, "flushing spans at shutdown"),
        }
    }
}

/// Install the process's subscriber. `service` names the process in traces unless
/// `OTEL_SERVICE_NAME` does (`orderflow-ingress`, `orderflow-worker`, ...). Call it from
/// inside the Tokio runtime: the exporter sends on it.
pub fn init(service: &str) -> Telemetry {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match std::env::var("LOG_FORMAT").as_deref() {
        Ok("json") => true,
        Ok("pretty") => false,
        _ => !std::io::stderr().is_terminal(),
    };
    let provider = match export::endpoint_configured().then(|| export::provider(service)) {
        None => None,
        Some(Ok(provider)) => Some(provider),
        Some(Err(e)) => {
            // Logging is not up yet; tracing off is better than not starting.
            eprintln!("OpenTelemetry export disabled: {e:#}");
            None
        }
    };
    let Some(provider) = provider else {
        // Tracing off: the very subscriber orderflow always had, no OpenTelemetry in it.
        let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
        if json {
            builder.json().flatten_event(true).init();
        } else {
            builder.compact().init();
        }
        return Telemetry { provider: None };
    };

    // `RUST_LOG` filters the log lines only; the exported spans are orderflow's own at
    // info and above, whatever the log level, so a quiet log keeps complete traces.
    let logs = fmt::layer().with_writer(std::io::stderr);
    let logs = if json {
        logs.json().flatten_event(true).boxed()
    } else {
        logs.compact().boxed()
    };
    use opentelemetry::trace::TracerProvider as _;
    let spans = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("orderflow"))
        .with_filter(Targets::new().with_target("orderflow", Level::INFO));
    tracing_subscriber::registry()
        .with(logs.with_filter(filter))
        .with(spans)
        .init();
    EXPORTING.store(true, Ordering::Relaxed);
    tracing::info!(service = %export::service_name(service), "exporting spans over OTLP/HTTP");
    Telemetry {
        provider: Some(provider),
    }
}
