//! Webhooks on the server: the dispatcher that turns the event log into deliveries and sends
//! them (see docs/webhooks.md).
//!
//! One pass: for every enabled webhook, read the events after its cursor, make a delivery for
//! each that matches its filter and move the cursor past what was read (one store transaction,
//! compare-and-set on the cursor); then claim the due deliveries (the oldest queued one of each
//! webhook, leased for the request time-out and a margin) and send each in a task of its own.
//!
//! **Invariants:** a delivery is in the store before its first attempt, and every attempt's
//! outcome is recorded (compare-and-set) before the next of the same webhook is claimed, so one
//! endpoint gets its deliveries in order and a restart (even `kill -9`) resumes where it was: a
//! lease that was not released expires and the delivery is sent again (at least once). A slow
//! or failing endpoint holds up only its own queue: each send is its own task, bounded by the
//! request time-out. Redirects are not followed (a 3xx is a failure).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use tender_core::webhook::{Delivery, DeliveryState, RetryPolicy, Webhook, sign};
use tender_core::{DeliveryId, Timestamp, WebhookId};
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;

use crate::state::AppState;

/// `[webhooks]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhooksConfig {
    /// Whether this server sends deliveries (the API works either way).
    pub enabled: bool,
    /// Time-out of one delivery request, connection included (milliseconds).
    pub request_timeout_ms: u64,
    /// Wait after the first failed attempt (milliseconds); doubles after each further one.
    pub retry_base_ms: u64,
    /// Longest wait between two attempts (milliseconds).
    pub retry_cap_ms: u64,
    /// Attempts before a delivery is dead.
    pub max_attempts: u32,
    /// How often the dispatcher looks for new events and due retries when nothing woke it
    /// (milliseconds).
    pub tick_ms: u64,
    /// Most deliveries being sent at once (each to a different webhook).
    pub max_in_flight: u32,
    /// PostgreSQL only: events younger than this (milliseconds) wait before the dispatcher
    /// passes over them, so that an event written concurrently with a lower id (which can
    /// become visible a moment later) is not skipped.
    pub settle_ms: u64,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        WebhooksConfig {
            enabled: true,
            request_timeout_ms: 10_000,
            retry_base_ms: 30_000,
            retry_cap_ms: 3_600_000,
            max_attempts: tender_core::webhook::DEFAULT_MAX_ATTEMPTS,
            tick_ms: 1000,
            max_in_flight: 64,
            settle_ms: 250,
        }
    }
}

impl WebhooksConfig {
    /// The retry policy, or what is wrong with the settings.
    pub fn policy(&self) -> Result<RetryPolicy, String> {
        RetryPolicy::new(self.retry_base_ms, self.retry_cap_ms, self.max_attempts)
            .map_err(|e| format!("webhooks: {e} (retry_base_ms, retry_cap_ms, max_attempts)"))
    }

    pub fn validate(&self) -> Result<(), String> {
        self.policy()?;
        if !(100..=600_000).contains(&self.request_timeout_ms) {
            return Err("webhooks.request_timeout_ms must be 100 to 600000".into());
        }
        if self.tick_ms == 0 {
            return Err("webhooks.tick_ms must be at least 1".into());
        }
        if self.max_in_flight == 0 {
            return Err("webhooks.max_in_flight must be at least 1".into());
        }
        if self.settle_ms > 60_000 {
            return Err("webhooks.settle_ms must be at most 60000".into());
        }
        Ok(())
    }
}

/// Wakes the dispatcher (a test ping or a redelivery was queued, a send finished).
#[derive(Clone, Default)]
pub struct Dispatcher {
    wake: Arc<Notify>,
}

impl Dispatcher {
    pub fn wake(&self) {
        self.wake.notify_one();
    }
}

/// Shortest time between two passes that new events start.
const EVENT_PASS_GAP: Duration = Duration::from_millis(100);
/// Events read per webhook and store call.
const EVENT_BATCH: u32 = 500;
/// How long a claimed delivery stays leased beyond the request time-out.
const LEASE_MARGIN_MS: i64 = 30_000;
/// Longest part of an endpoint's answer kept as the error text.
const ANSWER_EXCERPT: usize = 200;

/// Runs until `shutdown` turns true.
pub async fn dispatcher(
    state: AppState,
    config: WebhooksConfig,
    mut shutdown: watch::Receiver<bool>,
) {
    if !config.enabled {
        return;
    }
    let policy = match config.policy() {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "webhook dispatcher not started");
            return;
        }
    };
    let timeout = Duration::from_millis(config.request_timeout_ms);
    let client = match reqwest::Client::builder()
        .user_agent(concat!("tender-webhooks/", env!("CARGO_PKG_VERSION")))
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "webhook dispatcher not started: no HTTP client");
            return;
        }
    };
    // SQLite has one writer at a time: ids become visible in order, nothing needs to settle.
    let settle_ms = match state.store.backend() {
        tender_store::Backend::Sqlite => 0,
        tender_store::Backend::Postgres => i64::try_from(config.settle_ms).unwrap_or(i64::MAX),
    };
    let ctx = Arc::new(Sender {
        state: state.clone(),
        client,
        policy,
        settle_ms,
    });
    let mut tick = tokio::time::interval(Duration::from_millis(config.tick_ms.max(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let wake = state.webhooks.wake.clone();
    let mut events = state.events.subscribe();
    let mut events_open = true;
    let mut tasks: JoinSet<()> = JoinSet::new();
    let lease_ms = i64::try_from(config.request_timeout_ms)
        .unwrap_or(i64::MAX)
        .saturating_add(LEASE_MARGIN_MS);
    let mut gauge_at = Instant::now();
    let mut early: Option<tokio::time::Instant> = None;
    let mut last_pass = tokio::time::Instant::now();
    loop {
        let soon_at = early;
        let soon = async move {
            match soon_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = soon => {}
            _ = tick.tick() => {}
            _ = wake.notified() => {}
            changed = events.changed(), if events_open => {
                if changed.is_err() || *events.borrow() == crate::events::CLOSED {
                    events_open = false;
                }
                // A burst of events (a fleet reconnecting) runs a pass at most this often.
                let due = last_pass + EVENT_PASS_GAP;
                if tokio::time::Instant::now() < due {
                    early = Some(early.map_or(due, |e| e.min(due)));
                    continue;
                }
            }
            _ = shutdown.changed() => return,
        }
        if *shutdown.borrow() {
            return;
        }
        while tasks.try_join_next().is_some() {}
        last_pass = tokio::time::Instant::now();
        early = match pass(&ctx, &mut tasks, &config, lease_ms).await {
            Ok(wait) => wait.map(|w| tokio::time::Instant::now() + w),
            Err(e) => {
                tracing::warn!(error = %e, "webhook dispatcher pass failed; will retry");
                None
            }
        };
        if gauge_at.elapsed() >= Duration::from_secs(1) {
            gauge_at = Instant::now();
            if let Ok(n) = state.store.count_queued_deliveries().await {
                state
                    .metrics
                    .webhook_deliveries_queued
                    .set(i64::try_from(n).unwrap_or(i64::MAX));
            }
        }
    }
}

struct Sender {
    state: AppState,
    client: reqwest::Client,
    policy: RetryPolicy,
    settle_ms: i64,
}

/// One pass; returns when the next is due early because events were held back to settle.
async fn pass(
    ctx: &Arc<Sender>,
    tasks: &mut JoinSet<()>,
    config: &WebhooksConfig,
    lease_ms: i64,
) -> Result<Option<Duration>, tender_store::StoreError> {
    let store = &ctx.state.store;
    let webhooks = store.enabled_webhooks().await?;
    let mut again: Option<Duration> = None;
    for (w, cursor) in &webhooks {
        if let Some(wait) = enqueue(ctx, w, *cursor).await? {
            again = Some(again.map_or(wait, |a| a.min(wait)));
        }
    }
    let free = usize::try_from(config.max_in_flight)
        .unwrap_or(usize::MAX)
        .saturating_sub(tasks.len());
    if free == 0 {
        return Ok(again);
    }
    let by_id: HashMap<WebhookId, &Webhook> = webhooks.iter().map(|(w, _)| (w.id, w)).collect();
    let now = ctx.state.clock.now();
    let claimed = store
        .claim_due_deliveries(
            now,
            now.plus_millis(lease_ms),
            u32::try_from(free).unwrap_or(u32::MAX),
        )
        .await?;
    for d in claimed {
        // The claim joined enabled webhooks; one enabled since the list was read is fetched.
        let webhook = match by_id.get(&d.webhook_id) {
            Some(w) => (*w).clone(),
            None => match store.webhook(d.tenant_id, d.webhook_id).await? {
                Some(w) => w,
                None => continue,
            },
        };
        let ctx = ctx.clone();
        tasks.spawn(async move { ctx.send(&webhook, d).await });
    }
    Ok(again)
}

/// Makes deliveries for the webhook's new matching events and moves its cursor.
/// How many of the events stamped `ats` (in id order) may be passed over at `now`, and, when
/// some must wait, how long until the first of them settles. Events younger than `settle_ms`
/// wait; one stamped after `now` (the clock went back) does not wait for the clock.
fn settled_prefix(
    ats: impl Iterator<Item = Timestamp>,
    now: Timestamp,
    settle_ms: i64,
) -> (usize, Option<Duration>) {
    let horizon = now.plus_millis(-settle_ms);
    let mut settled = 0;
    for at in ats {
        if at <= horizon || at > now {
            settled += 1;
            continue;
        }
        let left = at.unix_millis().saturating_sub(horizon.unix_millis());
        let wait = u64::try_from(left.clamp(1, settle_ms.max(1))).unwrap_or(1);
        return (settled, Some(Duration::from_millis(wait)));
    }
    (settled, None)
}

/// Returns how long until held-back events settle, if some were held back.
async fn enqueue(
    ctx: &Sender,
    w: &Webhook,
    mut cursor: u64,
) -> Result<Option<Duration>, tender_store::StoreError> {
    let store = &ctx.state.store;
    loop {
        let mut events = store
            .webhook_events(w.tenant_id, cursor, EVENT_BATCH)
            .await?;
        let read = events.len();
        let now = ctx.state.clock.now();
        let (settled, held) = settled_prefix(events.iter().map(|e| e.at), now, ctx.settle_ms);
        events.truncate(settled);
        let Some(last) = events.last().map(|e| e.id) else {
            return Ok(held);
        };
        let deliveries: Vec<Delivery> = events
            .iter()
            .filter(|e| w.filter.matches(&e.kind))
            .map(|e| {
                Delivery::new(
                    DeliveryId::from_uuid(uuid::Uuid::now_v7()),
                    w,
                    Some(e.id),
                    &e.kind,
                    e.body(),
                    now,
                )
            })
            .collect();
        if !store
            .enqueue_deliveries(w.tenant_id, w.id, cursor, last, &deliveries)
            .await?
        {
            // Another dispatcher (or a concurrent pass) moved the cursor: it has these events.
            return Ok(None);
        }
        cursor = last;
        if held.is_some() || read < EVENT_BATCH as usize {
            return Ok(held);
        }
    }
}

impl Sender {
    async fn send(&self, webhook: &Webhook, mut d: Delivery) {
        let state = &self.state;
        let (read_state, read_attempts) = (d.state, d.attempts);
        let at = state.clock.now();
        let signature = sign(
            webhook.secret.as_str(),
            at.unix_millis().div_euclid(1000),
            d.body.as_bytes(),
        );
        let started = Instant::now();
        let result = self
            .client
            .post(webhook.url.as_str())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("Tender-Event", d.kind.as_str())
            .header("Tender-Delivery", d.id.to_string())
            .header("Tender-Signature", signature)
            .body(d.body.clone())
            .send()
            .await;
        let outcome = match result {
            Ok(mut answer) => {
                let status = answer.status();
                if status.is_success() {
                    Ok(status.as_u16())
                } else {
                    let excerpt = match answer.chunk().await {
                        Ok(Some(bytes)) => {
                            let text = String::from_utf8_lossy(&bytes);
                            format!(": {}", tender_core::webhook::cut(&text, ANSWER_EXCERPT))
                        }
                        _ => String::new(),
                    };
                    Err((Some(status.as_u16()), format!("HTTP {status}{excerpt}")))
                }
            }
            Err(e) => Err((None, error_text(&e))),
        };
        state
            .metrics
            .webhook_delivery_duration
            .observe(started.elapsed().as_secs_f64());
        let now = state.clock.now();
        match outcome {
            Ok(status) => d.succeed(status, now),
            Err((status, error)) => d.fail(status, &error, now, &self.policy, rand::random()),
        }
        match state
            .store
            .record_delivery(&d, read_state, read_attempts)
            .await
        {
            Ok(true) => {
                state.metrics.webhook_delivery(d.state);
                if d.state == DeliveryState::Dead {
                    tracing::warn!(webhook = %webhook.id, delivery = %d.id, attempts = d.attempts, error = d.last_error.as_deref().unwrap_or(""), "webhook delivery is dead after its last attempt");
                }
            }
            Ok(false) => {
                tracing::debug!(delivery = %d.id, "delivery changed while it was sent (redelivered or deleted); outcome not recorded");
            }
            Err(e) => {
                tracing::warn!(delivery = %d.id, error = %e, "could not record a webhook delivery's outcome; it is sent again when its lease ends");
            }
        }
        state.webhooks.wake();
    }
}

/// The error and its causes on one line.
fn error_text(e: &reqwest::Error) -> String {
    let mut text = if e.is_timeout() {
        "timed out".to_owned()
    } else if e.is_connect() {
        "could not connect".to_owned()
    } else {
        "request failed".to_owned()
    };
    let mut source: Option<&dyn std::error::Error> = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_checked_with_the_key_named() {
        assert_eq!(WebhooksConfig::default().validate(), Ok(()));
        let bad = |f: fn(&mut WebhooksConfig)| {
            let mut c = WebhooksConfig::default();
            f(&mut c);
            c.validate().unwrap_err()
        };
        assert!(bad(|c| c.max_attempts = 0).contains("max_attempts"));
        assert!(bad(|c| c.retry_base_ms = 0).contains("retry_base_ms"));
        assert!(bad(|c| c.retry_cap_ms = 1).contains("retry_cap_ms"));
        assert!(bad(|c| c.request_timeout_ms = 5).contains("request_timeout_ms"));
        assert!(bad(|c| c.tick_ms = 0).contains("tick_ms"));
        assert!(bad(|c| c.max_in_flight = 0).contains("max_in_flight"));
        assert!(bad(|c| c.settle_ms = 60_001).contains("settle_ms"));
    }

    #[test]
    fn young_events_wait_to_settle() {
        let now = Timestamp::from_unix_millis(1_000_000);
        let at = |ms: i64| now.plus_millis(ms);
        // Old events pass; the first young one stops the prefix, with the time it has left.
        assert_eq!(
            settled_prefix(
                [at(-500), at(-250), at(-100), at(-400)].into_iter(),
                now,
                250
            ),
            (2, Some(Duration::from_millis(150)))
        );
        assert_eq!(settled_prefix([at(-300)].into_iter(), now, 250), (1, None));
        // Nothing waits without a settle time, and a future stamp does not wait for the clock.
        assert_eq!(
            settled_prefix([at(0), at(-1)].into_iter(), now, 0),
            (2, None)
        );
        assert_eq!(
            settled_prefix([at(60_000), at(-10)].into_iter(), now, 250),
            (1, Some(Duration::from_millis(240)))
        );
        assert_eq!(settled_prefix(std::iter::empty(), now, 250), (0, None));
    }
}
