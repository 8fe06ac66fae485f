//! Conformance cases for [`LogStore`](crate::LogStore).

use tender_core::device::DeviceState;
use tender_core::logs::{LogQuery, LogRequest, LogState};
use tender_core::page::PageRequest;
use tender_core::{DeviceId, LogRequestId, TenantId, Timestamp};
use uuid::Uuid;

use super::{T0, device, limit, new_tenant};
use crate::{Store, StoreError};

fn at(secs: i64) -> Timestamp {
    T0.plus_millis(secs * 1000)
}

fn request(tenant: TenantId, device: DeviceId, ttl_secs: u64) -> LogRequest {
    let spec = LogQuery {
        sources: vec!["app".into(), "kernel.service".into()],
        since: Some(at(-3600)),
        until: None,
        lines: Some(200),
        max_bytes: Some(4096),
        ttl_secs: Some(ttl_secs),
        follow: false,
    }
    .validate(8 * 1024 * 1024)
    .expect("a valid test query");
    LogRequest::new(
        LogRequestId::from_uuid(Uuid::now_v7()),
        tenant,
        device,
        spec,
        Some("alice".into()),
        T0,
    )
}

async fn new_device(store: &dyn Store, tenant: TenantId, name: &str) -> DeviceId {
    let d = device(tenant, name, DeviceState::Accepted);
    store.insert_device(&d).await.unwrap();
    d.id
}

pub async fn log_requests_round_trip_and_list(store: &dyn Store) {
    let a = new_tenant(store, "a").await;
    let b = new_tenant(store, "b").await;
    let d = new_device(store, a.id, "d1").await;
    let other = new_device(store, a.id, "d2").await;

    let mut made = Vec::new();
    for _ in 0..5 {
        let r = request(a.id, d, 60);
        store.create_log_request(&r).await.unwrap();
        made.push(r);
    }
    store
        .create_log_request(&request(a.id, other, 60))
        .await
        .unwrap();
    let first = made[0].clone();
    assert_eq!(
        store.log_request(a.id, first.id).await.unwrap(),
        Some(first.clone())
    );
    assert_eq!(
        store.log_request(b.id, first.id).await.unwrap(),
        None,
        "tenant-scoped"
    );
    let follow = LogRequest {
        id: LogRequestId::from_uuid(Uuid::now_v7()),
        follow: true,
        until: Some(at(5)),
        ..first.clone()
    };
    store.create_log_request(&follow).await.unwrap();
    assert_eq!(
        store.log_request(a.id, follow.id).await.unwrap(),
        Some(follow.clone())
    );
    made.push(follow);

    // A device's requests, newest first, in pages.
    let mut seen = Vec::new();
    let mut page = PageRequest::first(limit(4));
    loop {
        let p = store.device_log_requests(a.id, d, &page).await.unwrap();
        seen.extend(p.items.iter().map(|r| r.id));
        match p.next {
            Some(n) => page.after = Some(n),
            None => break,
        }
    }
    let mut expected: Vec<_> = made.iter().map(|r| r.id).collect();
    expected.reverse();
    assert_eq!(seen, expected);
    assert!(
        store
            .device_log_requests(b.id, d, &PageRequest::first(limit(10)))
            .await
            .unwrap()
            .items
            .is_empty()
    );

    // The device must exist in the tenant.
    let missing = request(a.id, DeviceId::from_uuid(Uuid::now_v7()), 60);
    assert!(matches!(
        store.create_log_request(&missing).await,
        Err(StoreError::NotFound(_))
    ));
    let wrong_tenant = request(b.id, d, 60);
    assert!(store.create_log_request(&wrong_tenant).await.is_err());
}

pub async fn log_requests_change_only_from_the_state_read(store: &dyn Store) {
    let a = new_tenant(store, "a").await;
    let d = new_device(store, a.id, "d1").await;
    let r = request(a.id, d, 60);
    store.create_log_request(&r).await.unwrap();

    // Offline delivery: open requests wait for the device.
    let pending = store.pending_log_requests(a.id, d, at(1)).await.unwrap();
    assert_eq!(pending, vec![r.clone()]);
    assert!(
        store
            .pending_log_requests(a.id, d, at(60))
            .await
            .unwrap()
            .is_empty(),
        "not once expired"
    );

    let sent = r.on_sent(at(1)).unwrap();
    assert!(store.update_log_request(&r, &sent).await.unwrap());
    assert!(
        !store.update_log_request(&r, &sent).await.unwrap(),
        "a stale read does not apply"
    );
    let failed = r.on_failed("raced", at(1)).unwrap();
    assert!(!store.update_log_request(&r, &failed).await.unwrap());
    assert_eq!(
        store.log_request(a.id, r.id).await.unwrap(),
        Some(sent.clone())
    );

    let up = sent.on_uploading(at(2)).unwrap();
    assert!(store.update_log_request(&sent, &up).await.unwrap());
    assert_eq!(
        store.pending_log_requests(a.id, d, at(3)).await.unwrap(),
        vec![up.clone()],
        "still open while uploading"
    );
    assert_eq!(store.log_content(a.id, r.id).await.unwrap(), None);

    // The upload and the move to ready are one.
    let gzip: Vec<u8> = (0..=255u8).cycle().take(5000).collect();
    let ready = up.on_ready(gzip.len() as u64, at(4)).unwrap();
    assert!(!store.store_log_content(&sent, &ready, &gzip).await.unwrap());
    assert_eq!(
        store.log_content(a.id, r.id).await.unwrap(),
        None,
        "nothing stored when the request moved"
    );
    assert!(store.store_log_content(&up, &ready, &gzip).await.unwrap());
    assert_eq!(store.log_content(a.id, r.id).await.unwrap(), Some(gzip));
    let got = store.log_request(a.id, r.id).await.unwrap().unwrap();
    assert_eq!(got, ready);
    assert_eq!(got.state, LogState::Ready);
    assert_eq!(got.size, Some(5000));
    assert!(
        store
            .pending_log_requests(a.id, d, at(5))
            .await
            .unwrap()
            .is_empty()
    );
    let other = new_tenant(store, "b").await;
    assert_eq!(store.log_content(other.id, r.id).await.unwrap(), None);

    // A failure keeps its reason.
    let r2 = request(a.id, d, 60);
    store.create_log_request(&r2).await.unwrap();
    let f = r2
        .on_failed("no source \"x\" on this device", at(2))
        .unwrap();
    assert!(store.update_log_request(&r2, &f).await.unwrap());
    assert_eq!(store.log_request(a.id, r2.id).await.unwrap(), Some(f));
}

pub async fn log_requests_expire_and_prune(store: &dyn Store) {
    let a = new_tenant(store, "a").await;
    let b = new_tenant(store, "b").await;
    let d = new_device(store, a.id, "d1").await;
    let e = new_device(store, b.id, "e1").await;
    let short = request(a.id, d, 10);
    let long = request(a.id, d, 1000);
    let other = request(b.id, e, 10);
    let done = request(a.id, d, 10);
    for r in [&short, &long, &other, &done] {
        store.create_log_request(r).await.unwrap();
    }
    let ready = done.on_ready(3, at(1)).unwrap();
    assert!(
        store
            .store_log_content(&done, &ready, b"abc")
            .await
            .unwrap()
    );

    assert_eq!(store.expire_log_requests(at(9)).await.unwrap(), 0);
    assert_eq!(
        store.expire_log_requests(at(10)).await.unwrap(),
        2,
        "every tenant"
    );
    let s = store.log_request(a.id, short.id).await.unwrap().unwrap();
    assert_eq!(s.state, LogState::Expired);
    assert_eq!(s.finished_at, Some(at(10)));
    assert_eq!(
        store
            .log_request(a.id, long.id)
            .await
            .unwrap()
            .unwrap()
            .state,
        LogState::Pending
    );
    assert_eq!(
        store
            .log_request(a.id, done.id)
            .await
            .unwrap()
            .unwrap()
            .state,
        LogState::Ready,
        "a finished request never expires"
    );
    assert_eq!(store.expire_log_requests(at(10)).await.unwrap(), 0);

    // Pruning removes finished requests (and their content) only.
    assert_eq!(store.prune_log_requests(at(5)).await.unwrap(), 1);
    assert_eq!(store.log_request(a.id, done.id).await.unwrap(), None);
    assert_eq!(store.log_content(a.id, done.id).await.unwrap(), None);
    assert_eq!(store.prune_log_requests(at(11)).await.unwrap(), 2);
    assert!(store.log_request(a.id, long.id).await.unwrap().is_some());
}
