//! Prometheus metrics, served at `/metrics` in the OpenMetrics text format.
//!
//! Each server owns its registry (no global state), so several servers can run in one process
//! (as the tests do). Route labels are the matched route template, never the raw path, so label
//! cardinality stays bounded whatever clients send.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::state::AppState;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: String,
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub method: String,
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: String,
}

type HistogramCtor = fn() -> Histogram;

pub struct Metrics {
    registry: Registry,
    pub http_requests: Family<RequestLabels, Counter>,
    pub http_duration: Family<RouteLabels, Histogram, HistogramCtor>,
    pub http_in_flight: Gauge,
    /// Device listener connections by outcome: `accepted` (TLS done), `refused_limit`,
    /// `handshake_failed`, `handshake_timeout`.
    pub device_connections: Family<OutcomeLabels, Counter>,
    pub device_connections_open: Gauge,
    /// Enrollment requests by outcome: `issued`, `pending`, `refused`, `invalid`, `error`.
    pub device_enrollments: Family<OutcomeLabels, Counter>,
    /// MQTT connections by outcome: `accepted`, `refused_limit`, `handshake_failed`,
    /// `connect_timeout`, `protocol_error`, `refused_auth`, `refused_client_id`, `refused_other`.
    pub mqtt_connections: Family<OutcomeLabels, Counter>,
    pub mqtt_connections_open: Gauge,
    /// Messages received from devices and accepted, by kind.
    pub mqtt_messages_received: Family<KindLabels, Counter>,
    /// Messages sent to devices.
    pub mqtt_messages_sent: Counter,
    /// Packets refused, by reason (`not_authorized`, `topic_invalid`, `payload_invalid`, ...).
    pub mqtt_refused: Family<ReasonLabels, Counter>,
    /// Times a connection was slowed down for exceeding its message rate.
    pub mqtt_throttled: Counter,
    /// Downlink messages dropped, by reason (`queue_full`, `session_expired`).
    pub mqtt_dropped: Family<ReasonLabels, Counter>,
    /// Events that could not be recorded (the store refused them).
    pub events_not_recorded: Counter,
    /// The telemetry writer's (`tender_telemetry_*`).
    pub telemetry: crate::telemetry::TelemetryMetrics,
    /// Webhook delivery attempts by outcome: `succeeded`, `failed` (will retry), `dead`.
    pub webhook_deliveries: Family<OutcomeLabels, Counter>,
    /// Webhook deliveries waiting for an attempt (pending or failed), every tenant.
    pub webhook_deliveries_queued: Gauge,
    /// Time of one delivery request, answer or error.
    pub webhook_delivery_duration: Histogram,
    /// The alert engine's (`tender_alerts_*`).
    pub alerts: crate::alerts::AlertMetrics,
}

fn latency_histogram() -> Histogram {
    // 0.5 ms .. ~16 s
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("tender");
        let http_requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by method, route template and status",
            http_requests.clone(),
        );
        let http_duration = Family::<RouteLabels, Histogram, HistogramCtor>::new_with_constructor(
            latency_histogram,
        );
        registry.register(
            "http_request_duration_seconds",
            "Time to answer HTTP requests, by method and route template",
            http_duration.clone(),
        );
        let http_in_flight = Gauge::default();
        registry.register(
            "http_requests_in_flight",
            "HTTP requests being handled now",
            http_in_flight.clone(),
        );
        let device_connections = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "device_connections",
            "Connections to the device listener, by outcome",
            device_connections.clone(),
        );
        let device_connections_open = Gauge::default();
        registry.register(
            "device_connections_open",
            "Device listener connections open now",
            device_connections_open.clone(),
        );
        let device_enrollments = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "device_enrollments",
            "Enrollment requests, by outcome",
            device_enrollments.clone(),
        );
        let mqtt_connections = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "mqtt_connections",
            "Connections to the MQTT gateway, by outcome",
            mqtt_connections.clone(),
        );
        let mqtt_connections_open = Gauge::default();
        registry.register(
            "mqtt_connections_open",
            "MQTT connections open now (TLS and after)",
            mqtt_connections_open.clone(),
        );
        let mqtt_messages_received = Family::<KindLabels, Counter>::default();
        registry.register(
            "mqtt_messages_received",
            "MQTT messages accepted from devices, by kind",
            mqtt_messages_received.clone(),
        );
        let mqtt_messages_sent = Counter::default();
        registry.register(
            "mqtt_messages_sent",
            "MQTT messages published to devices",
            mqtt_messages_sent.clone(),
        );
        let mqtt_refused = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "mqtt_refused",
            "MQTT packets refused, by reason",
            mqtt_refused.clone(),
        );
        let mqtt_throttled = Counter::default();
        registry.register(
            "mqtt_throttled",
            "Times an MQTT connection was slowed for exceeding its message rate",
            mqtt_throttled.clone(),
        );
        let mqtt_dropped = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "mqtt_dropped",
            "Messages for devices dropped, by reason",
            mqtt_dropped.clone(),
        );
        let events_not_recorded = Counter::default();
        registry.register(
            "events_not_recorded",
            "Events the store could not record",
            events_not_recorded.clone(),
        );
        let telemetry = crate::telemetry::TelemetryMetrics::register(&mut registry);
        let webhook_deliveries = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "webhook_deliveries",
            "Webhook delivery attempts, by outcome",
            webhook_deliveries.clone(),
        );
        let webhook_deliveries_queued = Gauge::default();
        registry.register(
            "webhook_deliveries_queued",
            "Webhook deliveries waiting for an attempt",
            webhook_deliveries_queued.clone(),
        );
        let webhook_delivery_duration = latency_histogram();
        registry.register(
            "webhook_delivery_duration_seconds",
            "Time of one webhook delivery request",
            webhook_delivery_duration.clone(),
        );
        let alerts = crate::alerts::AlertMetrics::register(&mut registry);
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION").to_owned(),
            })
            .set(1);
        registry.register("build_info", "The running Tender version", build);
        Metrics {
            registry,
            http_requests,
            http_duration,
            http_in_flight,
            device_connections,
            device_connections_open,
            device_enrollments,
            mqtt_connections,
            mqtt_connections_open,
            mqtt_messages_received,
            mqtt_messages_sent,
            mqtt_refused,
            mqtt_throttled,
            mqtt_dropped,
            events_not_recorded,
            telemetry,
            webhook_deliveries,
            webhook_deliveries_queued,
            webhook_delivery_duration,
            alerts,
        }
    }

    /// Counts one webhook delivery attempt by the state it left the delivery in.
    pub fn webhook_delivery(&self, state: tender_core::webhook::DeliveryState) {
        self.webhook_deliveries
            .get_or_create(&OutcomeLabels {
                outcome: state.as_str(),
            })
            .inc();
    }

    pub fn event_not_recorded(&self) {
        self.events_not_recorded.inc();
    }

    pub fn mqtt_connection(&self, outcome: &'static str) {
        self.mqtt_connections
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    pub fn mqtt_refusal(&self, reason: &'static str) {
        self.mqtt_refused
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    pub fn mqtt_drop(&self, reason: &'static str) {
        self.mqtt_dropped
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// Counts one device connection with this outcome.
    pub fn device_connection(&self, outcome: &'static str) {
        self.device_connections
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    /// Counts one enrollment request with this outcome.
    pub fn enrollment(&self, outcome: &'static str) {
        self.device_enrollments
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Middleware: counts and times every request.
pub async fn track(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let method = req.method().as_str().to_owned();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let m = &state.metrics;
    m.http_in_flight.inc();
    let start = Instant::now();
    let resp = next.run(req).await;
    m.http_in_flight.dec();
    m.http_duration
        .get_or_create(&RouteLabels {
            method: method.clone(),
            route: route.clone(),
        })
        .observe(start.elapsed().as_secs_f64());
    m.http_requests
        .get_or_create(&RequestLabels {
            method,
            route,
            status: resp.status().as_u16(),
        })
        .inc();
    resp
}
