//! Conformance cases for [`CommandStore`](crate::CommandStore).

use tender_core::command::{Command, CommandName, CommandState, Outcome, Target};
use tender_core::device::DeviceState;
use tender_core::page::PageRequest;
use tender_core::{CommandId, DeviceId, TenantId, Timestamp};
use uuid::Uuid;

use super::{T0, device, limit, new_tenant};
use crate::{Store, StoreError};

fn command(tenant: TenantId, name: &str, ttl_secs: i64) -> Command {
    Command {
        id: CommandId::from_uuid(Uuid::now_v7()),
        tenant_id: tenant,
        name: CommandName::parse(name).unwrap(),
        args: vec!["a b".into(), "é".into()],
        target: "group \"all\"".into(),
        created_by: Some("alice".into()),
        created_at: T0,
        expires_at: T0.plus_millis(ttl_secs * 1000),
        timeout_secs: 60,
        max_attempts: 2,
    }
}

async fn devices(store: &dyn Store, tenant: TenantId, n: usize) -> Vec<DeviceId> {
    let mut ids = Vec::new();
    for i in 0..n {
        let d = device(tenant, &format!("d{i}"), DeviceState::Accepted);
        store.insert_device(&d).await.unwrap();
        ids.push(d.id);
    }
    ids.sort();
    ids
}

fn at(secs: i64) -> Timestamp {
    T0.plus_millis(secs * 1000)
}

pub async fn commands_round_trip_with_their_targets(store: &dyn Store) {
    let a = new_tenant(store, "a").await;
    let b = new_tenant(store, "b").await;
    let ids = devices(store, a.id, 150).await;
    let c = command(a.id, "ping", 3600);
    let mut with_dup = ids.clone();
    with_dup.push(ids[0]);
    store.create_command(&c, &with_dup).await.unwrap();
    assert_eq!(store.command(a.id, c.id).await.unwrap(), Some(c.clone()));
    assert_eq!(
        store.command(b.id, c.id).await.unwrap(),
        None,
        "tenant-scoped"
    );
    let s = store.command_summary(a.id, c.id).await.unwrap();
    assert_eq!((s.total, s.queued), (150, 150));
    assert_eq!(store.command_summary(b.id, c.id).await.unwrap().total, 0);

    // Targets page by device id, optionally by state.
    let mut seen = Vec::new();
    let mut page = PageRequest::first(limit(64));
    loop {
        let p = store
            .command_targets(a.id, c.id, None, &page)
            .await
            .unwrap();
        seen.extend(p.items.iter().map(|t| t.device_id));
        match p.next {
            Some(n) => page.after = Some(n),
            None => break,
        }
    }
    assert_eq!(seen, ids);
    let first = store
        .command_target(a.id, c.id, ids[0])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first, Target::queued(&c, ids[0]));

    // A device of another tenant, or none: nothing is stored.
    let other = devices(store, b.id, 1).await;
    let c2 = command(a.id, "reboot", 3600);
    assert!(matches!(
        store.create_command(&c2, &[ids[0], other[0]]).await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(store.command(a.id, c2.id).await.unwrap(), None);

    // Listing: newest first, paged.
    let c3 = command(a.id, "backup.db", 3600);
    store.create_command(&c3, &ids[..1]).await.unwrap();
    let p = store
        .list_commands(a.id, &PageRequest::first(limit(1)))
        .await
        .unwrap();
    assert_eq!(p.items[0].id, c3.id);
    let p = store
        .list_commands(
            a.id,
            &PageRequest {
                after: p.next,
                limit: limit(10),
            },
        )
        .await
        .unwrap();
    assert_eq!(p.items.iter().map(|c| c.id).collect::<Vec<_>>(), [c.id]);
    assert!(p.next.is_none());
    let p = store
        .device_command_targets(a.id, ids[0], &PageRequest::first(limit(10)))
        .await
        .unwrap();
    assert_eq!(
        p.items.iter().map(|t| t.command_id).collect::<Vec<_>>(),
        [c3.id, c.id]
    );
}

pub async fn command_targets_change_only_from_the_state_read(store: &dyn Store) {
    let a = new_tenant(store, "a").await;
    let ids = devices(store, a.id, 3).await;
    let c = command(a.id, "ping", 3600);
    store.create_command(&c, &ids).await.unwrap();

    // Sent in bulk: only queued targets, once.
    let sent = store.mark_sent(&c, &ids[..2], at(1)).await.unwrap();
    assert_eq!(sent.len(), 2);
    assert!(
        store
            .mark_sent(&c, &ids[..2], at(2))
            .await
            .unwrap()
            .is_empty()
    );
    let t = store
        .command_target(a.id, c.id, ids[0])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(t, Target::queued(&c, ids[0]).on_sent(at(1), 60, 2).unwrap());

    // A result, then a racing timeout on the stale copy: the timeout loses.
    let outcome = Outcome {
        exit_code: Some(0),
        stdout: "ok\n".into(),
        stderr: String::new(),
        output: Some(r#"{"disk":1}"#.into()),
        error: None,
    };
    let done = t.on_result(true, outcome.clone(), at(2)).unwrap();
    assert!(store.update_target(&t, &done).await.unwrap());
    let late = t.on_timeout(at(61), 2).unwrap();
    assert!(!store.update_target(&t, &late).await.unwrap());
    let stored = store
        .command_target(a.id, c.id, ids[0])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored, done);
    assert_eq!(stored.outcome, Some(outcome));

    // Timeouts: due after the deadline, in every tenant.
    assert!(store.due_timeouts(at(60), 100).await.unwrap().is_empty());
    let due = store.due_timeouts(at(61), 100).await.unwrap();
    assert_eq!(
        due.iter().map(|t| t.device_id).collect::<Vec<_>>(),
        [ids[1]]
    );
    let requeued = due[0].on_timeout(at(61), 2).unwrap();
    assert!(store.update_target(&due[0], &requeued).await.unwrap());
    assert!(store.due_timeouts(at(1000), 100).await.unwrap().is_empty());

    // Pending for a device: unfinished and unexpired.
    let pending = store
        .pending_for_device(a.id, ids[1], at(62))
        .await
        .unwrap();
    assert_eq!(pending, vec![requeued.clone()]);
    assert!(
        store
            .pending_for_device(a.id, ids[0], at(62))
            .await
            .unwrap()
            .is_empty()
    );

    // Cancel: the unfinished ones only.
    assert_eq!(store.cancel_command(a.id, c.id, at(70)).await.unwrap(), 2);
    assert_eq!(store.cancel_command(a.id, c.id, at(71)).await.unwrap(), 0);
    let s = store.command_summary(a.id, c.id).await.unwrap();
    assert_eq!((s.succeeded, s.canceled, s.pending()), (1, 2, 0));
    let only = store
        .command_targets(
            a.id,
            c.id,
            Some(CommandState::Canceled),
            &PageRequest::first(limit(10)),
        )
        .await
        .unwrap();
    assert_eq!(only.items.len(), 2);
}

pub async fn command_targets_expire_after_their_ttl(store: &dyn Store) {
    let a = new_tenant(store, "a").await;
    let b = new_tenant(store, "b").await;
    let da = devices(store, a.id, 2).await;
    let db = devices(store, b.id, 1).await;
    let short = command(a.id, "ping", 10);
    let long = command(a.id, "ping", 3600);
    let other = command(b.id, "ping", 10);
    store.create_command(&short, &da).await.unwrap();
    store.create_command(&long, &da).await.unwrap();
    store.create_command(&other, &db).await.unwrap();
    store.mark_sent(&short, &da[..1], at(1)).await.unwrap();
    let done = store
        .command_target(a.id, short.id, da[1])
        .await
        .unwrap()
        .unwrap()
        .cancel(at(2))
        .unwrap();
    store
        .update_target(&Target::queued(&short, da[1]), &done)
        .await
        .unwrap();
    assert_eq!(store.expire_targets(at(9)).await.unwrap(), 0);
    // Nothing is sent once expired.
    assert!(
        store
            .mark_sent(&other, &db, at(10))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store.expire_targets(at(10)).await.unwrap(),
        2,
        "every tenant"
    );
    let s = store.command_summary(a.id, short.id).await.unwrap();
    assert_eq!((s.expired, s.canceled), (1, 1));
    assert_eq!(
        store.command_summary(a.id, long.id).await.unwrap().queued,
        2
    );
    assert_eq!(
        store
            .pending_for_device(a.id, da[0], at(10))
            .await
            .unwrap()
            .iter()
            .map(|t| t.command_id)
            .collect::<Vec<_>>(),
        [long.id]
    );
}
