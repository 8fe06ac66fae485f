//! The alert engine: evaluates every enabled alert rule continuously and keeps the alerts'
//! lifecycle in the store, announcing each change as an event (`alert.fired`,
//! `alert.acknowledged`, `alert.resolved`), which is how alerts reach webhooks and event streams.
//!
//! Inputs: every batch of telemetry once it is stored ([`AppState::telemetry_stored`]) for
//! threshold rules; a tick every `[alerts] tick_ms` (through the server's clock) for durations,
//! offline rules (which devices in scope are offline, and since when, from the presence data)
//! and deployment updates (the `deployment.device_changed` events after the last one read).
//! The decisions are the core's ([`tender_core::alert::Tracker`]); the trackers live in memory.
//!
//! **Invariants:** at most one alert per rule and device is open (the store refuses a second);
//! an alert changes only by compare-and-set on the state read, so an acknowledgement and a
//! resolution racing each other are both kept; after a restart every open alert in the store
//! is open again in the engine (its tracker starts as firing): a threshold rule resolves it when
//! the newest stored sample (or a later one) is past the clear level, an offline rule when the
//! device is online; a rule that is disabled or deleted resolves its open alerts. A device is
//! checked against a rule's scope with the same group and query translation as device
//! searches, cached for [`SCOPE_TTL_MS`].

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Deserialize;
use tender_core::alert::{
    Alert, AlertRule, AlertState, Condition, Input, Scope, Severity, Tracker, Transition,
};
use tender_core::deployment::TargetState;
use tender_core::event::{EventFilter, EventKind, NewEvent};
use tender_core::page::{PageLimit, PageRequest};
use tender_core::{AlertId, AlertRuleId, DeviceId, TenantId, Timestamp};
use tender_store::filter::{Cond, Filter};
use tender_store::{DeviceFilter, DeviceSamples, StoreError};
use tokio::sync::{broadcast, watch};
use uuid::Uuid;

use crate::state::AppState;

/// `[alerts]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// How often the engine re-reads the rules and evaluates durations, offline devices and
    /// deployment updates (milliseconds, 10..=60000).
    pub tick_ms: u64,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig { tick_ms: 1000 }
    }
}

impl AlertsConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !(10..=60_000).contains(&self.tick_ms) {
            return Err("alerts.tick_ms must be between 10 and 60000".into());
        }
        Ok(())
    }
}

/// How long a device's membership of a rule's scope is remembered.
pub const SCOPE_TTL_MS: i64 = 30_000;
/// Most offline devices one offline rule looks at per pass.
const MAX_OFFLINE_SCAN: usize = 10_000;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SeverityLabels {
    pub severity: &'static str,
}

/// The engine's Prometheus metrics (`tender_alerts_*`).
#[derive(Clone)]
pub struct AlertMetrics {
    /// Open alerts (firing or acknowledged) known to this server's engine, by severity.
    pub open: Family<SeverityLabels, Gauge>,
    /// Inputs a rule evaluated (a sample, a tick of a pending condition, a presence or
    /// deployment change).
    pub evaluations: Counter,
    pub fired: Family<SeverityLabels, Counter>,
    pub resolved: Family<SeverityLabels, Counter>,
    /// Telemetry batches the engine missed because it fell behind.
    pub missed_batches: Counter,
}

impl AlertMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = AlertMetrics {
            open: Family::default(),
            evaluations: Counter::default(),
            fired: Family::default(),
            resolved: Family::default(),
            missed_batches: Counter::default(),
        };
        registry.register(
            "alerts_open",
            "Open alerts (firing or acknowledged), by severity",
            m.open.clone(),
        );
        registry.register(
            "alerts_rule_evaluations",
            "Inputs evaluated by alert rules",
            m.evaluations.clone(),
        );
        registry.register("alerts_fired", "Alerts fired, by severity", m.fired.clone());
        registry.register(
            "alerts_resolved",
            "Alerts resolved by the engine, by severity",
            m.resolved.clone(),
        );
        registry.register(
            "alerts_missed_telemetry_batches",
            "Telemetry batches the alert engine missed because it fell behind",
            m.missed_batches.clone(),
        );
        m
    }
}

/// The `data` of an alert event.
pub fn event_for(alert: &Alert, kind: EventKind, at: Timestamp) -> NewEvent {
    let mut e = NewEvent::device(alert.tenant_id, alert.device_id, at, kind)
        .with("alert_id", alert.id.to_string())
        .with("rule_id", alert.rule_id.to_string())
        .with("rule_name", alert.rule_name.as_str())
        .with("severity", alert.severity.as_str());
    match kind {
        EventKind::AlertResolved => {
            if let Some(r) = &alert.resolve_reason {
                e = e.with("reason", r.as_str());
            }
        }
        EventKind::AlertAcknowledged => {
            e = e
                .with("reason", alert.reason.as_str())
                .with("by", alert.acknowledged_by.clone().unwrap_or_default())
                .with("note", alert.ack_note.clone().unwrap_or_default());
        }
        _ => e = e.with("reason", alert.reason.as_str()),
    }
    if let Some(v) = alert.value {
        e = e.with("value", v);
    }
    e
}

type Key = (AlertRuleId, DeviceId);

struct Engine {
    rules: HashMap<AlertRuleId, AlertRule>,
    trackers: HashMap<Key, Tracker>,
    /// The open alert of each (rule, device), with its tenant and severity.
    open: HashMap<Key, (AlertId, TenantId, Severity)>,
    /// Whether a device is in a rule's scope, and until when that answer holds.
    scope_cache: HashMap<Key, (bool, Timestamp)>,
    /// The last `deployment.device_changed` event read, per tenant.
    event_cursor: HashMap<TenantId, u64>,
    /// Whether the open alerts in the store have been taken over (once per start).
    restored: bool,
}

impl Engine {
    fn new() -> Self {
        Engine {
            rules: HashMap::new(),
            trackers: HashMap::new(),
            open: HashMap::new(),
            scope_cache: HashMap::new(),
            event_cursor: HashMap::new(),
            restored: false,
        }
    }

    /// Re-reads the enabled rules; resolves the open alerts of rules that went away.
    async fn reload(&mut self, state: &AppState) -> Result<(), StoreError> {
        let rules: HashMap<AlertRuleId, AlertRule> = state
            .store
            .enabled_alert_rules()
            .await?
            .into_iter()
            .map(|r| (r.id, r))
            .collect();
        // A rule whose condition or scope changed is a different rule (they never change in
        // place today, but the trackers must not outlive a rule either way).
        let gone: HashSet<AlertRuleId> = self
            .rules
            .keys()
            .filter(|id| !rules.contains_key(id))
            .copied()
            .collect();
        self.rules = rules;
        if !gone.is_empty() {
            self.trackers.retain(|(r, _), _| !gone.contains(r));
            self.scope_cache.retain(|(r, _), _| !gone.contains(r));
            let closing: Vec<(Key, AlertId, TenantId)> = self
                .open
                .iter()
                .filter(|((r, _), _)| gone.contains(r))
                .map(|(k, (a, t, _))| (*k, *a, *t))
                .collect();
            for (key, alert, tenant) in closing {
                self.open.remove(&key);
                resolve_in_store(
                    state,
                    tenant,
                    alert,
                    None,
                    "the rule was disabled or deleted",
                )
                .await;
            }
        }
        if !self.restored {
            // Retried on the next tick until it succeeds.
            self.restore(state).await?;
            self.restored = true;
        }
        Ok(())
    }

    /// After a start: every open alert is open in the engine; a threshold alert resolves at
    /// once if the newest stored sample is past the clear level.
    async fn restore(&mut self, state: &AppState) -> Result<(), StoreError> {
        let open = state.store.open_alerts().await?;
        for a in open {
            let key = (a.rule_id, a.device_id);
            if self.open.contains_key(&key) {
                continue; // taken over by an earlier, interrupted attempt
            }
            let Some(rule) = self.rules.get(&a.rule_id).cloned() else {
                // The rule was disabled while the server was down.
                resolve_in_store(
                    state,
                    a.tenant_id,
                    a.id,
                    None,
                    "the rule was disabled or deleted",
                )
                .await;
                continue;
            };
            self.open.insert(key, (a.id, a.tenant_id, a.severity));
            self.trackers.insert(key, Tracker::firing());
            if let Condition::TwinReported { .. } = rule.condition {
                let twin = state.store.twin(a.tenant_id, a.device_id).await?;
                let holds = rule
                    .condition
                    .reported_holds(&serde_json::Value::Object(twin.reported));
                let now = state.clock.now();
                self.feed(state, &rule, a.device_id, Input::Reported(holds), now)
                    .await;
            }
            if let Some(metric) = rule.condition.metric() {
                let latest = state.store.latest_samples(a.tenant_id, a.device_id).await?;
                if let Some(s) = latest.into_iter().find(|s| &s.metric == metric) {
                    self.feed(state, &rule, a.device_id, Input::Sample(s.value), s.at)
                        .await;
                }
            }
        }
        Ok(())
    }

    async fn in_scope(&mut self, state: &AppState, rule: &AlertRule, device: DeviceId) -> bool {
        if rule.scope == Scope::All {
            return true;
        }
        let now = state.clock.now();
        let key = (rule.id, device);
        if let Some((member, until)) = self.scope_cache.get(&key)
            && *until > now
        {
            return *member;
        }
        let member = match scope_filter(state, rule, now).await {
            Ok(f) => {
                let filter = DeviceFilter {
                    state: None,
                    matching: Some(Filter::And(vec![Filter::Cond(Cond::Ids(vec![device])), f])),
                };
                match state.store.count_devices(rule.tenant_id, &filter).await {
                    Ok(n) => n > 0,
                    Err(e) => {
                        tracing::warn!(rule = %rule.id, error = %e, "cannot check an alert rule's scope");
                        return false;
                    }
                }
            }
            Err(e) => {
                tracing::warn!(rule = %rule.id, error = %e, "an alert rule's scope cannot be evaluated");
                false
            }
        };
        self.scope_cache
            .insert(key, (member, now.plus_millis(SCOPE_TTL_MS)));
        member
    }

    /// One input for one (rule, device); carries out the transition.
    async fn feed(
        &mut self,
        state: &AppState,
        rule: &AlertRule,
        device: DeviceId,
        input: Input,
        at: Timestamp,
    ) {
        state.metrics.alerts.evaluations.inc();
        let key = (rule.id, device);
        let tracker = self.trackers.entry(key).or_default();
        let Some(transition) = tracker.apply(&rule.condition, input, at) else {
            return;
        };
        match transition {
            Transition::Fire { value, reason } => {
                let alert = Alert::fire(
                    AlertId::from_uuid(Uuid::now_v7()),
                    rule,
                    device,
                    state.clock.now(),
                    value,
                    reason,
                );
                match state.store.insert_alert(&alert).await {
                    Ok(()) => {
                        self.open
                            .insert(key, (alert.id, alert.tenant_id, alert.severity));
                        state
                            .metrics
                            .alerts
                            .fired
                            .get_or_create(&SeverityLabels {
                                severity: alert.severity.as_str(),
                            })
                            .inc();
                        crate::events::emit(
                            state,
                            event_for(&alert, EventKind::AlertFired, alert.fired_at),
                        )
                        .await;
                    }
                    Err(StoreError::Conflict(_)) => {
                        // Already open (deduplication): keep tracking it as firing.
                        if let Ok(page) = state
                            .store
                            .list_alerts(
                                rule.tenant_id,
                                &tender_store::AlertFilter {
                                    open: true,
                                    device: Some(device),
                                    rule: Some(rule.id),
                                    ..Default::default()
                                },
                                &PageRequest::first(PageLimit::new(1).unwrap_or_default()),
                            )
                            .await
                            && let Some(a) = page.items.first()
                        {
                            self.open.insert(key, (a.id, a.tenant_id, a.severity));
                        }
                    }
                    Err(e) => {
                        // Not recorded: fire again on the next tick.
                        tracing::warn!(rule = %rule.id, device = %device, error = %e, "cannot record an alert; will retry");
                        if let Some(t) = self.trackers.get_mut(&key) {
                            t.retry_fire();
                        }
                    }
                }
            }
            Transition::Resolve { value, reason } => {
                if let Some((alert, tenant, severity)) = self.open.remove(&key)
                    && resolve_in_store(state, tenant, alert, value, &reason).await
                {
                    state
                        .metrics
                        .alerts
                        .resolved
                        .get_or_create(&SeverityLabels {
                            severity: severity.as_str(),
                        })
                        .inc();
                }
            }
        }
    }

    async fn on_samples(&mut self, state: &AppState, batch: &DeviceSamples) {
        let rules: Vec<AlertRule> = self
            .rules
            .values()
            .filter(|r| r.tenant_id == batch.tenant)
            .filter(|r| {
                r.condition
                    .metric()
                    .is_some_and(|m| batch.samples.iter().any(|s| &s.metric == m))
            })
            .cloned()
            .collect();
        for rule in rules {
            if !self.in_scope(state, &rule, batch.device).await {
                continue;
            }
            let Some(metric) = rule.condition.metric() else {
                continue;
            };
            let mut samples: Vec<_> = batch
                .samples
                .iter()
                .filter(|s| &s.metric == metric)
                .collect();
            samples.sort_by_key(|s| s.at);
            for s in samples {
                self.feed(state, &rule, batch.device, Input::Sample(s.value), s.at)
                    .await;
            }
        }
    }

    async fn tick(&mut self, state: &AppState) {
        if let Err(e) = self.reload(state).await {
            tracing::warn!(error = %e, "cannot read alert rules; will retry");
            return;
        }
        let now = state.clock.now();
        let rules: Vec<AlertRule> = self.rules.values().cloned().collect();
        for rule in &rules {
            if matches!(rule.condition, Condition::Offline { .. })
                && let Err(e) = self.offline_pass(state, rule).await
            {
                tracing::warn!(rule = %rule.id, error = %e, "alert rule pass failed; will retry");
            }
        }
        let tenants: HashSet<TenantId> = rules
            .iter()
            .filter(|r| uses_events(&r.condition))
            .map(|r| r.tenant_id)
            .collect();
        for tenant in tenants {
            if let Err(e) = self.events_pass(state, tenant).await {
                tracing::warn!(tenant = %tenant, error = %e, "alert event pass failed; will retry");
            }
        }
        // Durations.
        let pending: Vec<Key> = self
            .trackers
            .iter()
            .filter(|(_, t)| t.is_pending())
            .map(|(k, _)| *k)
            .collect();
        for (rule_id, device) in pending {
            if let Some(rule) = self.rules.get(&rule_id).cloned() {
                self.feed(state, &rule, device, Input::Tick, now).await;
            }
        }
        // Deployment events of tenants with update rules are read once per tick.
        self.event_cursor.retain(|t, _| {
            rules
                .iter()
                .any(|r| r.tenant_id == *t && uses_events(&r.condition))
        });
        self.scope_cache.retain(|_, (_, until)| *until > now);
        let mut counts: HashMap<Severity, i64> = HashMap::new();
        for (_, _, s) in self.open.values() {
            *counts.entry(*s).or_default() += 1;
        }
        for s in Severity::ALL {
            state
                .metrics
                .alerts
                .open
                .get_or_create(&SeverityLabels {
                    severity: s.as_str(),
                })
                .set(counts.get(&s).copied().unwrap_or(0));
        }
    }

    /// Offline devices in the rule's scope start (or keep) their wait; devices that came back
    /// resolve.
    async fn offline_pass(&mut self, state: &AppState, rule: &AlertRule) -> Result<(), String> {
        let now = state.clock.now();
        let scope = scope_filter(state, rule, now).await?;
        // Only accepted devices: a rejected or decommissioned device is meant to stay away.
        let filter = DeviceFilter {
            state: Some(tender_core::device::DeviceState::Accepted),
            matching: Some(Filter::And(vec![
                scope,
                Filter::Cond(Cond::EverSeen),
                Filter::Not(Box::new(Filter::Cond(Cond::Online))),
            ])),
        };
        let mut offline: HashMap<DeviceId, Timestamp> = HashMap::new();
        let mut page = PageRequest::first(PageLimit::new(1000).unwrap_or_default());
        loop {
            let p = state
                .store
                .list_devices(rule.tenant_id, &filter, &page)
                .await
                .map_err(|e| e.to_string())?;
            for d in &p.items {
                offline.insert(d.id, d.last_seen_at.unwrap_or(d.created_at));
            }
            match p.next {
                Some(n) if offline.len() < MAX_OFFLINE_SCAN => page.after = Some(n),
                _ => break,
            }
        }
        let tracked: Vec<DeviceId> = self
            .trackers
            .iter()
            .filter(|((r, _), t)| *r == rule.id && (t.is_pending() || t.is_firing()))
            .map(|((_, d), _)| *d)
            .collect();
        for device in tracked {
            if !offline.contains_key(&device) {
                self.feed(state, rule, device, Input::Connected, now).await;
            }
        }
        for (device, since) in offline {
            let key = (rule.id, device);
            let idle = self
                .trackers
                .get(&key)
                .is_none_or(|t| !t.is_pending() && !t.is_firing());
            if idle {
                self.feed(state, rule, device, Input::Disconnected, since)
                    .await;
            }
        }
        Ok(())
    }

    /// Deployment updates that ended and reported-state changes since the last pass, for the
    /// `update failed` and `reported.*` rules of a tenant.
    async fn events_pass(&mut self, state: &AppState, tenant: TenantId) -> Result<(), String> {
        let kinds = vec![
            EventKind::DeploymentDeviceChanged,
            EventKind::TwinReportedChanged,
        ];
        let first = !self.event_cursor.contains_key(&tenant);
        let mut cursor = self.event_cursor.get(&tenant).copied();
        loop {
            let events = state
                .store
                .events(
                    tenant,
                    &EventFilter {
                        after: cursor,
                        device: None,
                        group: None,
                        kinds: kinds.clone(),
                    },
                    1000,
                )
                .await
                .map_err(|e| e.to_string())?;
            let n = events.len();
            for e in events {
                cursor = Some(e.id);
                if first {
                    // History from before the engine started is not replayed.
                    continue;
                }
                let Some(device) = e.device_id else { continue };
                if e.kind == EventKind::TwinReportedChanged {
                    self.reported_changed(state, tenant, device).await?;
                    continue;
                }
                let input = match e
                    .data
                    .get("state")
                    .and_then(|v| v.as_str())
                    .and_then(TargetState::parse)
                {
                    Some(TargetState::Failed | TargetState::RolledBack) => Input::UpdateFailed,
                    Some(TargetState::Succeeded) => Input::UpdateSucceeded,
                    _ => continue,
                };
                let rules: Vec<AlertRule> = self
                    .rules
                    .values()
                    .filter(|r| r.tenant_id == tenant && r.condition == Condition::UpdateFailed)
                    .cloned()
                    .collect();
                for r in rules {
                    if self.in_scope(state, &r, device).await {
                        self.feed(state, &r, device, input, e.at).await;
                    }
                }
            }
            if n < 1000 {
                break;
            }
        }
        self.event_cursor.insert(tenant, cursor.unwrap_or(0));
        Ok(())
    }

    /// Evaluates the tenant's `reported.*` rules against the device's reported state now.
    async fn reported_changed(
        &mut self,
        state: &AppState,
        tenant: TenantId,
        device: DeviceId,
    ) -> Result<(), String> {
        let rules: Vec<AlertRule> = self
            .rules
            .values()
            .filter(|r| {
                r.tenant_id == tenant && matches!(r.condition, Condition::TwinReported { .. })
            })
            .cloned()
            .collect();
        if rules.is_empty() {
            return Ok(());
        }
        let twin = match state.store.twin(tenant, device).await {
            Ok(t) => t,
            Err(StoreError::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e.to_string()),
        };
        let reported = serde_json::Value::Object(twin.reported);
        let now = state.clock.now();
        for r in rules {
            if self.in_scope(state, &r, device).await {
                let holds = r.condition.reported_holds(&reported);
                self.feed(state, &r, device, Input::Reported(holds), now)
                    .await;
            }
        }
        Ok(())
    }
}

/// Whether a condition is evaluated from the event log.
fn uses_events(c: &Condition) -> bool {
    matches!(c, Condition::UpdateFailed | Condition::TwinReported { .. })
}

/// The store filter of a rule's scope.
async fn scope_filter(
    state: &AppState,
    rule: &AlertRule,
    now: Timestamp,
) -> Result<Filter, String> {
    match &rule.scope {
        Scope::All => Ok(Filter::True),
        Scope::Group(g) => {
            let groups = state
                .store
                .groups(rule.tenant_id)
                .await
                .map_err(|e| e.to_string())?;
            let Some(group) = groups.iter().find(|x| x.id == *g) else {
                return Ok(Filter::False);
            };
            crate::api::search::group_membership(&groups, group, now).map_err(|p| p.detail)
        }
        Scope::Query(q) => {
            let query = tender_core::query::parse(q).map_err(|e| e.to_string())?;
            crate::api::search::to_filter(state, rule.tenant_id, &query, now)
                .await
                .map_err(|p| p.detail)
        }
    }
}

/// Resolves an open alert by compare-and-set (retrying once if an acknowledgement came in
/// between) and records `alert.resolved`. Whether it resolved it.
pub async fn resolve_in_store(
    state: &AppState,
    tenant: TenantId,
    id: AlertId,
    value: Option<f64>,
    reason: &str,
) -> bool {
    for _ in 0..3 {
        let mut alert = match state.store.alert(tenant, id).await {
            Ok(Some(a)) => a,
            Ok(None) => return false,
            Err(e) => {
                tracing::warn!(alert = %id, error = %e, "cannot read an alert to resolve it");
                return false;
            }
        };
        let from = alert.state;
        if from == AlertState::Resolved {
            return false;
        }
        let now = state.clock.now();
        if alert.resolve(reason, now).is_err() {
            return false;
        }
        match state.store.update_alert(&alert, from).await {
            Ok(true) => {
                let mut e = event_for(&alert, EventKind::AlertResolved, now);
                if let Some(v) = value {
                    e = e.with("value", v);
                }
                crate::events::emit(state, e).await;
                return true;
            }
            Ok(false) => continue,
            Err(e) => {
                tracing::warn!(alert = %id, error = %e, "cannot resolve an alert");
                return false;
            }
        }
    }
    false
}

/// Runs the engine until `shutdown` turns true.
pub async fn engine(state: AppState, config: AlertsConfig, mut shutdown: watch::Receiver<bool>) {
    let mut samples = state.telemetry_stored();
    let mut tick = tokio::time::interval(Duration::from_millis(config.tick_ms.max(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut engine = Engine::new();
    loop {
        tokio::select! {
            _ = tick.tick() => engine.tick(&state).await,
            batch = samples.recv() => match batch {
                Ok(batch) => engine.on_samples(&state, &batch).await,
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    state.metrics.alerts.missed_batches.inc_by(n);
                    tracing::warn!(missed = n, "the alert engine fell behind the telemetry stream");
                }
                Err(broadcast::error::RecvError::Closed) => {
                    // No more telemetry (the server is stopping): ticks only.
                    samples = state.telemetry_stored();
                    tokio::select! {
                        _ = shutdown.changed() => return,
                        _ = tick.tick() => engine.tick(&state).await,
                    }
                }
            },
            _ = shutdown.changed() => return,
        }
    }
}
