//! Conformance cases for [`AlertStore`](crate::AlertStore).

use tender_core::alert::{Alert, AlertRule, AlertState, Scope, Severity, parse_condition};
use tender_core::device::DeviceState;
use tender_core::page::PageRequest;
use tender_core::{AlertId, AlertRuleId, DeviceId, TenantId, Timestamp};
use uuid::Uuid;

use super::{T0, device, limit, new_tenant};
use crate::{AlertFilter, Store, StoreError};

fn at(s: i64) -> Timestamp {
    T0.plus_millis(s * 1000)
}

fn rule(tenant: TenantId, name: &str, condition: &str, scope: Scope) -> AlertRule {
    AlertRule {
        id: AlertRuleId::from_uuid(Uuid::now_v7()),
        tenant_id: tenant,
        name: name.into(),
        severity: Severity::Warning,
        scope,
        condition: parse_condition(condition).expect("test conditions are valid"),
        enabled: true,
        created_at: T0,
        updated_at: T0,
        created_by: Some("alice".into()),
    }
}

async fn new_device(store: &dyn Store, tenant: TenantId, name: &str) -> DeviceId {
    let d = device(tenant, name, DeviceState::Accepted);
    store.insert_device(&d).await.unwrap();
    d.id
}

fn fire(rule: &AlertRule, device: DeviceId, s: i64) -> Alert {
    Alert::fire(
        AlertId::from_uuid(Uuid::now_v7()),
        rule,
        device,
        at(s),
        Some(81.5),
        "temperature is 81.5 (> 80)".into(),
    )
}

pub async fn alert_rules_round_trip_and_change(store: &dyn Store) {
    let t = new_tenant(store, "alr-a").await;
    let other = new_tenant(store, "alr-b").await;
    let hot = rule(
        t.id,
        "hot",
        "temperature > 80 for 5m",
        Scope::Query("tag.site = \"north\"".into()),
    );
    store.create_alert_rule(&hot).await.unwrap();
    assert_eq!(
        store.alert_rule(t.id, hot.id).await.unwrap(),
        Some(hot.clone())
    );
    assert_eq!(store.alert_rule(other.id, hot.id).await.unwrap(), None);
    // Names are unique per tenant.
    assert!(matches!(
        store
            .create_alert_rule(&rule(t.id, "hot", "offline for 1m", Scope::All))
            .await,
        Err(StoreError::Conflict(_))
    ));
    store
        .create_alert_rule(&rule(other.id, "hot", "offline for 1m", Scope::All))
        .await
        .unwrap();
    let off = rule(t.id, "off", "offline for 10m", Scope::All);
    let upd = rule(t.id, "upd", "update failed", Scope::All);
    store.create_alert_rule(&off).await.unwrap();
    store.create_alert_rule(&upd).await.unwrap();

    // Newest first, paged.
    let first = store
        .list_alert_rules(t.id, &PageRequest::first(limit(2)))
        .await
        .unwrap();
    assert_eq!(
        first.items.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![upd.id, off.id]
    );
    let rest = store
        .list_alert_rules(
            t.id,
            &PageRequest {
                after: first.next,
                limit: limit(2),
            },
        )
        .await
        .unwrap();
    assert_eq!(rest.items, vec![hot.clone()]);
    assert_eq!(rest.next, None);

    // Update: name, severity, enabled.
    let mut changed = off.clone();
    changed.enabled = false;
    changed.severity = Severity::Critical;
    changed.name = "offline long".into();
    changed.updated_at = at(5);
    store.update_alert_rule(&changed).await.unwrap();
    assert_eq!(
        store.alert_rule(t.id, off.id).await.unwrap(),
        Some(changed.clone())
    );
    let mut foreign = changed.clone();
    foreign.tenant_id = other.id;
    assert!(matches!(
        store.update_alert_rule(&foreign).await,
        Err(StoreError::NotFound(_))
    ));
    // Only enabled rules, of every tenant.
    let enabled: Vec<AlertRuleId> = store
        .enabled_alert_rules()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert!(enabled.contains(&hot.id) && enabled.contains(&upd.id));
    assert!(!enabled.contains(&off.id));
    assert_eq!(enabled.len(), 3);

    // Deleting: tenant-scoped, NotFound the second time.
    assert!(matches!(
        store.delete_alert_rule(other.id, upd.id, at(6), "x").await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(
        store
            .delete_alert_rule(t.id, upd.id, at(6), "rule deleted")
            .await
            .unwrap(),
        vec![]
    );
    assert_eq!(store.alert_rule(t.id, upd.id).await.unwrap(), None);
    assert!(matches!(
        store.delete_alert_rule(t.id, upd.id, at(6), "x").await,
        Err(StoreError::NotFound(_))
    ));
}

pub async fn alerts_open_once_per_rule_and_device(store: &dyn Store) {
    let t = new_tenant(store, "alo-a").await;
    let other = new_tenant(store, "alo-b").await;
    let hot = rule(t.id, "hot", "temperature > 80", Scope::All);
    store.create_alert_rule(&hot).await.unwrap();
    let d1 = new_device(store, t.id, "d1").await;
    let d2 = new_device(store, t.id, "d2").await;

    let a1 = fire(&hot, d1, 1);
    store.insert_alert(&a1).await.unwrap();
    assert_eq!(store.alert(t.id, a1.id).await.unwrap(), Some(a1.clone()));
    assert_eq!(store.alert(other.id, a1.id).await.unwrap(), None);
    // A second open alert for the same rule and device is refused; another device is fine.
    assert!(matches!(
        store.insert_alert(&fire(&hot, d1, 2)).await,
        Err(StoreError::Conflict(_))
    ));
    store.insert_alert(&fire(&hot, d2, 2)).await.unwrap();
    // A device of another tenant is refused.
    let mut foreign = fire(&hot, d1, 3);
    foreign.tenant_id = other.id;
    assert!(store.insert_alert(&foreign).await.is_err());

    // Acknowledge: compare-and-set on the state read.
    let mut acked = a1.clone();
    acked.acknowledge("bob", "on it", at(3)).unwrap();
    assert!(
        store
            .update_alert(&acked, AlertState::Firing)
            .await
            .unwrap()
    );
    assert!(
        !store
            .update_alert(&acked, AlertState::Firing)
            .await
            .unwrap()
    );
    assert_eq!(store.alert(t.id, a1.id).await.unwrap(), Some(acked.clone()));
    // Still open: another firing is still refused.
    assert!(matches!(
        store.insert_alert(&fire(&hot, d1, 4)).await,
        Err(StoreError::Conflict(_))
    ));

    let mut resolved = acked.clone();
    resolved.resolve("temperature is 70 (< 76)", at(5)).unwrap();
    assert!(
        store
            .update_alert(&resolved, AlertState::Acknowledged)
            .await
            .unwrap()
    );
    assert_eq!(
        store.alert(t.id, a1.id).await.unwrap(),
        Some(resolved.clone())
    );
    // A new firing after resolution is a new alert; the old one is history.
    let again = fire(&hot, d1, 6);
    store.insert_alert(&again).await.unwrap();
    assert_eq!(
        store.alert(t.id, a1.id).await.unwrap(),
        Some(resolved.clone())
    );

    // Open alerts of every tenant.
    let open: Vec<AlertId> = store
        .open_alerts()
        .await
        .unwrap()
        .into_iter()
        .filter(|a| a.tenant_id == t.id)
        .map(|a| a.id)
        .collect();
    assert_eq!(open.len(), 2);
    assert!(open.contains(&again.id) && !open.contains(&a1.id));

    // Deleting the rule resolves its open alerts, keeps the history.
    let closed = store
        .delete_alert_rule(t.id, hot.id, at(7), "rule deleted")
        .await
        .unwrap();
    assert_eq!(closed.len(), 2);
    assert!(closed.iter().all(|a| a.state == AlertState::Resolved
        && a.resolved_at == Some(at(7))
        && a.resolve_reason.as_deref() == Some("rule deleted")));
    let all = store
        .list_alerts(
            t.id,
            &AlertFilter::default(),
            &PageRequest::first(limit(10)),
        )
        .await
        .unwrap();
    assert_eq!(all.items.len(), 3);
    assert!(all.items.iter().all(|a| a.state == AlertState::Resolved));
}

pub async fn alerts_list_filtered_newest_first(store: &dyn Store) {
    let t = new_tenant(store, "all-a").await;
    let other = new_tenant(store, "all-b").await;
    let hot = rule(t.id, "hot", "temperature > 80", Scope::All);
    let mut off = rule(t.id, "off", "offline for 1m", Scope::All);
    off.severity = Severity::Critical;
    store.create_alert_rule(&hot).await.unwrap();
    store.create_alert_rule(&off).await.unwrap();
    let d1 = new_device(store, t.id, "d1").await;
    let d2 = new_device(store, t.id, "d2").await;
    let h1 = fire(&hot, d1, 1);
    let h2 = fire(&hot, d2, 2);
    let o1 = fire(&off, d1, 3);
    for a in [&h1, &h2, &o1] {
        store.insert_alert(a).await.unwrap();
    }
    let mut h1r = h1.clone();
    h1r.resolve("cool", at(4)).unwrap();
    assert!(store.update_alert(&h1r, AlertState::Firing).await.unwrap());

    let ids = |f: AlertFilter| async move {
        store
            .list_alerts(t.id, &f, &PageRequest::first(limit(100)))
            .await
            .unwrap()
            .items
            .into_iter()
            .map(|a| a.id)
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(AlertFilter::default()).await, vec![o1.id, h2.id, h1.id]);
    assert_eq!(
        ids(AlertFilter {
            state: Some(AlertState::Resolved),
            ..Default::default()
        })
        .await,
        vec![h1.id]
    );
    assert_eq!(
        ids(AlertFilter {
            open: true,
            ..Default::default()
        })
        .await,
        vec![o1.id, h2.id]
    );
    assert_eq!(
        ids(AlertFilter {
            severity: Some(Severity::Critical),
            ..Default::default()
        })
        .await,
        vec![o1.id]
    );
    assert_eq!(
        ids(AlertFilter {
            device: Some(d1),
            ..Default::default()
        })
        .await,
        vec![o1.id, h1.id]
    );
    assert_eq!(
        ids(AlertFilter {
            rule: Some(hot.id),
            device: Some(d2),
            ..Default::default()
        })
        .await,
        vec![h2.id]
    );
    // Pages of one cover everything once.
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let p = store
            .list_alerts(
                t.id,
                &AlertFilter::default(),
                &PageRequest {
                    after,
                    limit: limit(1),
                },
            )
            .await
            .unwrap();
        seen.extend(p.items.iter().map(|a| a.id));
        match p.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    assert_eq!(seen, vec![o1.id, h2.id, h1.id]);
    // Another tenant sees none.
    assert!(
        store
            .list_alerts(
                other.id,
                &AlertFilter::default(),
                &PageRequest::first(limit(10))
            )
            .await
            .unwrap()
            .items
            .is_empty()
    );
}
