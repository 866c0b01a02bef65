//! The OTLP/HTTP span exporter, configured by the standard `OTEL_*` variables
//! (`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_PROTOCOL` = `http/protobuf` (the
//! default) or `http/json`, `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_SERVICE_NAME`,
//! `OTEL_TRACES_SAMPLER`, `OTEL_BSP_*`), sending through hyper on the process's runtime.

use axum::body::Bytes;
use axum::http::{Request, Response};
use opentelemetry_http::hyper::HyperClient;
use opentelemetry_http::{HttpClient, HttpError};
use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use std::time::Duration;
use tokio::runtime::Handle;

/// How long one export may take before it is abandoned (its spans are dropped).
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

fn set(var: &str) -> Option<String> {
    std::env::var(var).ok().filter(|v| !v.trim().is_empty())
}

/// Is an OTLP endpoint configured (for all signals, or for traces), and tracing not
/// switched off the standard ways (`OTEL_SDK_DISABLED=true`, `OTEL_TRACES_EXPORTER=none`)?
pub(super) fn endpoint_configured() -> bool {
    let disabled = set("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
        || set("OTEL_TRACES_EXPORTER").is_some_and(|v| v.trim() == "none");
    !disabled
        && (set("OTEL_EXPORTER_OTLP_ENDPOINT").is_some()
            || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some())
}

/// `OTEL_SERVICE_NAME`, else the role's default.
pub(super) fn service_name(default: &str) -> String {
    set("OTEL_SERVICE_NAME").unwrap_or_else(|| default.to_owned())
}

/// A tracer provider exporting in batches (`OTEL_BSP_*`) to the configured endpoint.
pub(super) fn provider(service: &str) -> anyhow::Result<SdkTracerProvider> {
    let client = OnRuntime {
        client: HyperClient::with_default_connector(EXPORT_TIMEOUT, None),
        runtime: Handle::try_current()
            .map_err(|_| anyhow::anyhow!("telemetry must start inside the Tokio runtime"))?,
    };
    let mut exporter = SpanExporter::builder()
        .with_http()
        .with_http_client(client)
        .with_timeout(EXPORT_TIMEOUT);
    if set("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL").is_none()
        && set("OTEL_EXPORTER_OTLP_PROTOCOL").is_none()
    {
        // The specification's default (the crate would pick JSON, being built with it).
        exporter = exporter.with_protocol(Protocol::HttpBinary);
    }
    let resource = Resource::builder()
        .with_service_name(service_name(service))
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter.build()?)
        .with_resource(resource)
        .build())
}

/// hyper needs a Tokio runtime, and the SDK's batch processor exports from a thread of its
/// own: each export is spawned onto the process's runtime and awaited from there.
#[derive(Debug)]
struct OnRuntime {
    client: HyperClient,
    runtime: Handle,
}

#[async_trait::async_trait]
impl HttpClient for OnRuntime {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let client = self.client.clone();
        self.runtime
            .spawn(async move { client.send_bytes(request).await })
            .await?
    }
}
