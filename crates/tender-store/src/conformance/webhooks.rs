//! Conformance cases for [`WebhookStore`](crate::WebhookStore).

use tender_core::event::{EventKind, NewEvent};
use tender_core::page::PageRequest;
use tender_core::webhook::{
    Delivery, DeliveryState, KindFilter, RetryPolicy, Webhook, WebhookSecret, WebhookUrl,
};
use tender_core::{DeliveryId, TenantId, WebhookId};
use uuid::Uuid;

use super::{T0, limit, new_tenant};
use crate::{Store, StoreError};

fn webhook(tenant: TenantId, name: &str) -> Webhook {
    Webhook {
        id: WebhookId::from_uuid(Uuid::now_v7()),
        tenant_id: tenant,
        name: name.into(),
        url: WebhookUrl::parse("https://hooks.example.com/tender?x=1").unwrap(),
        filter: KindFilter::parse("device.*,alert.fired").unwrap(),
        enabled: true,
        secret: WebhookSecret::from_random(&[9; 32]).unwrap(),
        created_at: T0,
        updated_at: T0,
    }
}

fn delivery(w: &Webhook, event: Option<u64>) -> Delivery {
    Delivery::new(
        DeliveryId::from_uuid(Uuid::now_v7()),
        w,
        event,
        "device.created",
        format!("{{\"id\":{}}}", event.unwrap_or(0)),
        T0,
    )
}

pub async fn webhooks_round_trip_update_delete_per_tenant(store: &dyn Store) {
    let t = new_tenant(store, "wh-a").await;
    let other = new_tenant(store, "wh-b").await;
    let w1 = webhook(t.id, "pager");
    let w2 = webhook(t.id, "audit");
    let w3 = webhook(t.id, "chat");
    for w in [&w1, &w2, &w3] {
        store.create_webhook(w).await.unwrap();
    }
    assert!(matches!(
        store.create_webhook(&w1).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(store.webhook(t.id, w1.id).await.unwrap(), Some(w1.clone()));
    assert_eq!(store.webhook(other.id, w1.id).await.unwrap(), None);

    // Oldest first, paged.
    let first = store
        .list_webhooks(t.id, &PageRequest::first(limit(2)))
        .await
        .unwrap();
    assert_eq!(
        first.items.iter().map(|w| w.id).collect::<Vec<_>>(),
        vec![w1.id, w2.id]
    );
    let rest = store
        .list_webhooks(
            t.id,
            &PageRequest {
                after: first.next,
                limit: limit(2),
            },
        )
        .await
        .unwrap();
    assert_eq!(
        rest.items.iter().map(|w| w.id).collect::<Vec<_>>(),
        vec![w3.id]
    );
    assert_eq!(rest.next, None);
    assert!(
        store
            .list_webhooks(other.id, &PageRequest::first(limit(10)))
            .await
            .unwrap()
            .items
            .is_empty()
    );

    let mut changed = w1.clone();
    changed.url = WebhookUrl::parse("http://10.0.0.1:9000/in").unwrap();
    changed.filter = KindFilter::all();
    changed.enabled = false;
    changed.secret = WebhookSecret::from_random(&[3; 40]).unwrap();
    changed.updated_at = T0.plus_millis(5);
    store.update_webhook(&changed).await.unwrap();
    assert_eq!(
        store.webhook(t.id, w1.id).await.unwrap(),
        Some(changed.clone())
    );
    // Another tenant can neither change nor delete it.
    let mut foreign = changed.clone();
    foreign.tenant_id = other.id;
    assert!(matches!(
        store.update_webhook(&foreign).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store.delete_webhook(other.id, w1.id).await,
        Err(StoreError::NotFound(_))
    ));
    // Only enabled webhooks are dispatched.
    let enabled: Vec<WebhookId> = store
        .enabled_webhooks()
        .await
        .unwrap()
        .into_iter()
        .map(|(w, _)| w.id)
        .collect();
    assert!(enabled.contains(&w2.id) && !enabled.contains(&w1.id));

    // Deleting takes the deliveries with it.
    store
        .insert_delivery(&delivery(&w2, Some(1)))
        .await
        .unwrap();
    store.delete_webhook(t.id, w2.id).await.unwrap();
    assert_eq!(store.webhook(t.id, w2.id).await.unwrap(), None);
    assert!(matches!(
        store.delete_webhook(t.id, w2.id).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store.insert_delivery(&delivery(&w2, Some(2))).await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(store.count_queued_deliveries().await.unwrap(), 0);
}

pub async fn webhook_cursor_starts_now_and_moves_by_compare_and_set(store: &dyn Store) {
    let t = new_tenant(store, "wh-cursor").await;
    let before = store
        .append_event(&NewEvent::tenant(t.id, T0, EventKind::ConfigChanged))
        .await
        .unwrap();
    let w = webhook(t.id, "ops");
    store.create_webhook(&w).await.unwrap();
    let cursor = |all: Vec<(Webhook, u64)>| {
        all.into_iter()
            .find(|(x, _)| x.id == w.id)
            .map(|(_, c)| c)
            .unwrap()
    };
    // A new webhook starts after the events already written.
    assert_eq!(cursor(store.enabled_webhooks().await.unwrap()), before);
    let e1 = store
        .append_event(&NewEvent::tenant(t.id, T0, EventKind::DeploymentStateChanged).with("x", 1))
        .await
        .unwrap();
    let e2 = store
        .append_event(&NewEvent::tenant(t.id, T0, EventKind::ConfigChanged))
        .await
        .unwrap();
    let events = store.webhook_events(t.id, before, 10).await.unwrap();
    assert_eq!(
        events.iter().map(|e| e.id).collect::<Vec<_>>(),
        vec![e1, e2]
    );
    assert_eq!(events[0].kind, "deployment.state_changed");
    assert_eq!(events[0].data["x"], 1);
    assert_eq!(
        store.webhook_events(t.id, before, 1).await.unwrap().len(),
        1
    );

    let d = delivery(&w, Some(e1));
    assert!(
        store
            .enqueue_deliveries(t.id, w.id, before, e2, std::slice::from_ref(&d))
            .await
            .unwrap()
    );
    assert_eq!(cursor(store.enabled_webhooks().await.unwrap()), e2);
    // A stale cursor writes nothing.
    let again = delivery(&w, Some(e1));
    assert!(
        !store
            .enqueue_deliveries(t.id, w.id, before, e2, std::slice::from_ref(&again))
            .await
            .unwrap()
    );
    assert_eq!(store.delivery(t.id, w.id, again.id).await.unwrap(), None);
    assert_eq!(store.delivery(t.id, w.id, d.id).await.unwrap(), Some(d));
}

pub async fn deliveries_are_claimed_in_order_and_recorded(store: &dyn Store) {
    let t = new_tenant(store, "wh-claim").await;
    let other = new_tenant(store, "wh-claim-b").await;
    let a = webhook(t.id, "a");
    let b = webhook(other.id, "b");
    store.create_webhook(&a).await.unwrap();
    store.create_webhook(&b).await.unwrap();
    let a1 = delivery(&a, Some(1));
    let a2 = delivery(&a, Some(2));
    let b1 = delivery(&b, None);
    assert!(
        store
            .enqueue_deliveries(t.id, a.id, 0, 2, &[a1.clone(), a2.clone()])
            .await
            .unwrap()
    );
    store.insert_delivery(&b1).await.unwrap();
    assert_eq!(store.count_queued_deliveries().await.unwrap(), 3);

    // One per webhook, the oldest, across tenants; leased so a second claim gets nothing.
    let lease = T0.plus_millis(10_000);
    let claimed = store.claim_due_deliveries(T0, lease, 10).await.unwrap();
    let mut ids: Vec<DeliveryId> = claimed.iter().map(|d| d.id).collect();
    ids.sort();
    let mut want = vec![a1.id, b1.id];
    want.sort();
    assert_eq!(ids, want);
    assert!(
        store
            .claim_due_deliveries(T0.plus_millis(1), lease, 10)
            .await
            .unwrap()
            .is_empty()
    );

    // a1 fails: a2 still waits behind it (order per endpoint).
    let policy = RetryPolicy::new(1000, 60_000, 2).unwrap();
    let mut d = claimed.iter().find(|d| d.id == a1.id).unwrap().clone();
    d.fail(Some(500), "boom", T0, &policy, 1.0);
    assert!(
        store
            .record_delivery(&d, DeliveryState::Pending, 0)
            .await
            .unwrap()
    );
    // The same outcome again is a stale compare-and-set.
    assert!(
        !store
            .record_delivery(&d, DeliveryState::Pending, 0)
            .await
            .unwrap()
    );
    assert!(
        store
            .claim_due_deliveries(T0.plus_millis(999), lease, 10)
            .await
            .unwrap()
            .iter()
            .all(|c| c.webhook_id != a.id)
    );
    let retry = store
        .claim_due_deliveries(T0.plus_millis(1000), lease, 10)
        .await
        .unwrap();
    assert_eq!(retry.iter().map(|c| c.id).collect::<Vec<_>>(), vec![a1.id]);
    assert_eq!(retry[0].state, DeliveryState::Failed);
    assert_eq!(retry[0].attempts, 1);
    assert_eq!(retry[0].last_error.as_deref(), Some("boom"));

    // Second failure: dead; a2 is next.
    let mut d = retry[0].clone();
    d.fail(
        None,
        "connection refused",
        T0.plus_millis(1000),
        &policy,
        1.0,
    );
    assert_eq!(d.state, DeliveryState::Dead);
    assert!(
        store
            .record_delivery(&d, DeliveryState::Failed, 1)
            .await
            .unwrap()
    );
    let next = store
        .claim_due_deliveries(T0.plus_millis(1000), lease, 10)
        .await
        .unwrap();
    assert_eq!(next.iter().map(|c| c.id).collect::<Vec<_>>(), vec![a2.id]);
    let mut ok = next[0].clone();
    ok.succeed(204, T0.plus_millis(1001));
    assert!(
        store
            .record_delivery(&ok, DeliveryState::Pending, 0)
            .await
            .unwrap()
    );

    // The log: newest first, paged, tenant-scoped.
    let page = store
        .list_deliveries(t.id, a.id, &PageRequest::first(limit(1)))
        .await
        .unwrap();
    assert_eq!(
        page.items.iter().map(|d| d.id).collect::<Vec<_>>(),
        vec![a2.id]
    );
    assert_eq!(page.items[0].state, DeliveryState::Succeeded);
    assert_eq!(page.items[0].last_status, Some(204));
    let page2 = store
        .list_deliveries(
            t.id,
            a.id,
            &PageRequest {
                after: page.next,
                limit: limit(1),
            },
        )
        .await
        .unwrap();
    assert_eq!(
        page2.items.iter().map(|d| d.id).collect::<Vec<_>>(),
        vec![a1.id]
    );
    assert_eq!(page2.items[0].state, DeliveryState::Dead);
    assert_eq!(page2.items[0].attempts, 2);
    assert_eq!(page2.next, None);
    assert!(
        store
            .list_deliveries(other.id, a.id, &PageRequest::first(limit(10)))
            .await
            .unwrap()
            .items
            .is_empty()
    );

    // Redelivery makes the dead one pending and due again; twice is a conflict.
    let now = T0.plus_millis(5000);
    let r = crate::redeliver(store, t.id, a.id, a1.id, now)
        .await
        .unwrap();
    assert_eq!((r.state, r.attempts), (DeliveryState::Pending, 0));
    assert!(matches!(
        crate::redeliver(store, t.id, a.id, a1.id, now).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        crate::redeliver(store, other.id, a.id, a1.id, now).await,
        Err(StoreError::NotFound(_))
    ));
    let again = store
        .claim_due_deliveries(now, now.plus_millis(10_000), 10)
        .await
        .unwrap();
    assert!(again.iter().any(|c| c.id == a1.id));

    // A disabled webhook's deliveries wait.
    let mut off = a.clone();
    off.enabled = false;
    store.update_webhook(&off).await.unwrap();
    let mut c = again.into_iter().find(|c| c.id == a1.id).unwrap();
    c.fail(Some(502), "bad gateway", now, &policy, 0.0);
    assert!(
        store
            .record_delivery(&c, DeliveryState::Pending, 0)
            .await
            .unwrap()
    );
    assert!(
        store
            .claim_due_deliveries(now.plus_millis(100_000), now.plus_millis(200_000), 10)
            .await
            .unwrap()
            .iter()
            .all(|c| c.webhook_id != a.id)
    );
}
