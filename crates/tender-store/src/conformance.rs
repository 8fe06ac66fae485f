//! The conformance suite every [`Store`] adapter must pass.
//!
//! Each case is a public async function taking a fresh, empty, migrated store. The
//! [`conformance_suite!`](crate::conformance_suite) macro turns them all into `#[tokio::test]`s
//! for one adapter, given an async fixture that returns a [`Fixture`]. Cases that need a second
//! connection to the same database (re-opening) take a [`Fixture`] and use its `reopen`.

// Test code: a failed expectation is a failed test, which is what unwrap and expect report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeSet, HashSet};

use tender_core::auth::Role;
use tender_core::device::{Device, DeviceState};
use tender_core::inventory::{Inventory, parse_inventory};
use tender_core::page::{PageLimit, PageRequest};
use tender_core::presence::{DeviceConnection, Transport};
use tender_core::telemetry::{MetricName, Sample};
use tender_core::tenant::{Tenant, TenantSlug};
use tender_core::user::{ApiToken, User};
use tender_core::{ConnectionId, DeviceId, TenantId, Timestamp, TokenId, UserId};
use uuid::Uuid;

use tender_core::certificate::{DeviceCertificate, DeviceCredential};
use tender_core::enrollment::EnrollmentToken;

use crate::{DeviceFilter, DynStore, OpenOptions, Store, StoreError, TransitionError};

mod alerts;
mod artifacts;
mod commands;
mod deployments;
mod webhooks;
pub use alerts::*;
pub use artifacts::*;
pub use commands::*;
pub use deployments::*;
pub use webhooks::*;
mod logs;
pub use logs::*;

/// A fresh store for one test, plus whatever keeps its database alive until the test ends.
pub struct Fixture {
    pub store: DynStore,
    /// Options that open the same database again.
    pub options: OpenOptions,
    /// Dropped last: removes the test database.
    pub guard: Box<dyn std::any::Any + Send>,
}

/// Generates one `#[tokio::test]` per conformance case for the adapter that `$fixture`
/// (an `async fn() -> Fixture`) opens.
#[macro_export]
macro_rules! conformance_suite {
    ($fixture:path) => {
        $crate::conformance_suite!(@cases $fixture;
            backend_and_ping,
            tenants_round_trip_and_unique_slugs,
            users_are_unique_per_tenant,
            users_need_an_existing_tenant,
            api_tokens_lifecycle,
            api_token_revocation_is_tenant_scoped,
            devices_round_trip_exactly,
            device_ids_are_unique_across_tenants,
            devices_are_invisible_to_other_tenants,
            device_pages_cover_everything_once,
            device_filter_and_count,
            device_state_is_compare_and_set,
            transitions_follow_the_core_rules,
            concurrent_transitions_have_one_winner,
            enrollment_can_be_closed_per_tenant,
            enrollment_tokens_lifecycle,
            enrollment_token_uses_are_atomic,
            device_keys_are_unique_per_tenant,
            certificates_lifecycle,
            last_seen_only_moves_forward,
            connections_round_trip_and_close_once,
            connections_are_tenant_scoped,
            connection_history_pages_newest_first,
            online_devices_are_tenant_scoped,
            close_open_connections_covers_every_tenant,
            device_credentials_rotate,
            device_credentials_are_tenant_scoped,
            samples_round_trip,
            samples_replace_on_the_same_timestamp,
            sample_writes_are_all_or_nothing,
            sample_reads_are_tenant_scoped,
            sample_ranges_include_from_and_exclude_to,
            sample_queries_page_by_limit,
            latest_samples_are_the_newest_per_metric,
            a_thousand_samples_in_one_call,
            sample_batches_of_many_devices_are_all_or_nothing,
            sample_series_aggregate_buckets_over_devices,
            retention_prunes_old_samples_device_by_device,
            inventory_replaces_whole_and_tracks_changes,
            inventory_is_tenant_scoped,
            inventories_of_many_devices,
            tags_set_replace_delete_and_are_bounded,
            groups_lifecycle_and_members,
            device_filters_match_the_same_on_every_backend,
            twin_documents_are_compare_and_set,
            reported_state_is_searchable_by_type,
            config_layers_are_compare_and_set,
            events_append_in_order_and_filter,
            device_metadata_round_trips,
            commands_round_trip_with_their_targets,
            command_targets_change_only_from_the_state_read,
            command_targets_expire_after_their_ttl,
            artifacts_round_trip_unique_per_version,
            trusted_keys_are_per_tenant,
            deployments_round_trip_and_change_by_revision,
            deployment_targets_notify_report_and_page,
            deployment_targets_in_bulk_and_retried,
            webhooks_round_trip_update_delete_per_tenant,
            webhook_cursor_starts_now_and_moves_by_compare_and_set,
            deliveries_are_claimed_in_order_and_recorded,
            alert_rules_round_trip_and_change,
            alerts_open_once_per_rule_and_device,
            alerts_list_filtered_newest_first,
            log_requests_round_trip_and_list,
            log_requests_change_only_from_the_state_read,
            log_requests_expire_and_prune,
        );
        #[tokio::test]
        async fn data_survives_reopen() {
            let f = $fixture().await;
            $crate::conformance::data_survives_reopen(&f).await;
        }
    };
    (@cases $fixture:path; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $case() {
                let f = $fixture().await;
                $crate::conformance::$case(&*f.store).await;
            }
        )*
    };
}

const T0: Timestamp = Timestamp::from_unix_millis(1_790_000_000_123);

fn tenant(slug: &str) -> Tenant {
    Tenant {
        id: TenantId::from_uuid(Uuid::now_v7()),
        slug: TenantSlug::parse(slug).expect("test slugs are valid"),
        name: format!("Tenant {slug}"),
        enrollment_open: true,
        created_at: T0,
    }
}

async fn new_tenant(store: &dyn Store, slug: &str) -> Tenant {
    let t = tenant(slug);
    store.create_tenant(&t).await.expect("create tenant");
    t
}

fn user(tenant: TenantId, name: &str, roles: Vec<Role>) -> User {
    User {
        id: UserId::from_uuid(Uuid::now_v7()),
        tenant_id: tenant,
        username: name.into(),
        roles,
        disabled: false,
        created_at: T0,
    }
}

fn device(tenant: TenantId, name: &str, state: DeviceState) -> Device {
    Device::new(
        DeviceId::from_uuid(Uuid::now_v7()),
        tenant,
        name.into(),
        Some("rpi4".into()),
        state,
        T0,
    )
    .expect("test names are valid")
}

fn token(tenant: TenantId, user: UserId) -> ApiToken {
    ApiToken {
        id: TokenId::from_uuid(Uuid::now_v7()),
        tenant_id: tenant,
        user_id: user,
        name: "ci".into(),
        secret_hash: vec![7; 32],
        created_at: T0,
        expires_at: Some(T0.plus_millis(86_400_000)),
        revoked_at: None,
        last_used_at: None,
    }
}

fn limit(n: u32) -> PageLimit {
    PageLimit::new(n).expect("test limits are valid")
}

pub async fn backend_and_ping(store: &dyn Store) {
    store.ping().await.expect("ping");
    assert!(matches!(store.backend().as_str(), "sqlite" | "postgres"));
}

pub async fn tenants_round_trip_and_unique_slugs(store: &dyn Store) {
    let t = new_tenant(store, "acme").await;
    assert_eq!(store.tenant(t.id).await.unwrap(), Some(t.clone()));
    assert_eq!(
        store.tenant_by_slug(&t.slug).await.unwrap(),
        Some(t.clone())
    );
    let missing = TenantSlug::parse("nobody").unwrap();
    assert_eq!(store.tenant_by_slug(&missing).await.unwrap(), None);
    assert_eq!(
        store
            .tenant(TenantId::from_uuid(Uuid::now_v7()))
            .await
            .unwrap(),
        None
    );

    let dup = tenant("acme");
    let err = store.create_tenant(&dup).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err}");
}

pub async fn users_are_unique_per_tenant(store: &dyn Store) {
    let a = new_tenant(store, "a").await;
    let b = new_tenant(store, "b").await;
    let admin = user(a.id, "admin", vec![Role::Admin, Role::Viewer]);
    store.create_user(&admin).await.unwrap();
    assert_eq!(
        store.user(a.id, admin.id).await.unwrap(),
        Some(admin.clone())
    );
    assert_eq!(
        store.user_by_name(a.id, "admin").await.unwrap(),
        Some(admin.clone())
    );
    // Not visible from another tenant.
    assert_eq!(store.user(b.id, admin.id).await.unwrap(), None);
    assert_eq!(store.user_by_name(b.id, "admin").await.unwrap(), None);

    let err = store
        .create_user(&user(a.id, "admin", vec![]))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err}");
    // The same name in another tenant is a different user.
    store
        .create_user(&user(b.id, "admin", vec![Role::Viewer]))
        .await
        .unwrap();
    assert_eq!(store.count_users(a.id).await.unwrap(), 1);
    assert_eq!(store.count_users(b.id).await.unwrap(), 1);
}

pub async fn users_need_an_existing_tenant(store: &dyn Store) {
    let ghost = TenantId::from_uuid(Uuid::now_v7());
    let err = store
        .create_user(&user(ghost, "x", vec![]))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err}");
}

pub async fn api_tokens_lifecycle(store: &dyn Store) {
    let t = new_tenant(store, "acme").await;
    let u = user(t.id, "ops", vec![Role::Operator]);
    store.create_user(&u).await.unwrap();
    let tok = token(t.id, u.id);
    store.create_api_token(&tok).await.unwrap();
    assert_eq!(
        store.api_token_for_authentication(tok.id).await.unwrap(),
        Some(tok.clone())
    );

    let used = T0.plus_millis(5);
    store.record_token_use(t.id, tok.id, used).await.unwrap();
    let got = store
        .api_token_for_authentication(tok.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.last_used_at, Some(used));
    assert!(got.is_usable(used));

    let revoked = T0.plus_millis(10);
    store.revoke_api_token(t.id, tok.id, revoked).await.unwrap();
    let got = store
        .api_token_for_authentication(tok.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.revoked_at, Some(revoked));
    assert!(!got.is_usable(revoked));
    // A second revocation finds no usable token and keeps the first time.
    let err = store
        .revoke_api_token(t.id, tok.id, T0.plus_millis(20))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err}");
    let got = store
        .api_token_for_authentication(tok.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.revoked_at, Some(revoked));

    // A token for a user of another tenant is refused.
    let other = new_tenant(store, "other").await;
    let err = store
        .create_api_token(&token(other.id, u.id))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err}");
}

pub async fn api_token_revocation_is_tenant_scoped(store: &dyn Store) {
    let a = new_tenant(store, "a").await;
    let b = new_tenant(store, "b").await;
    let u = user(a.id, "ops", vec![Role::Operator]);
    store.create_user(&u).await.unwrap();
    let tok = token(a.id, u.id);
    store.create_api_token(&tok).await.unwrap();
    let err = store.revoke_api_token(b.id, tok.id, T0).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err}");
    store
        .record_token_use(b.id, tok.id, T0.plus_millis(1))
        .await
        .unwrap();
    let got = store
        .api_token_for_authentication(tok.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.revoked_at, None);
    assert_eq!(
        got.last_used_at, None,
        "a use recorded from another tenant must not land"
    );
}

pub async fn devices_round_trip_exactly(store: &dyn Store) {
    let t = new_tenant(store, "acme").await;
    let mut d = device(t.id, "Lobby kiosk — north ✓", DeviceState::Pending);
    d.device_type = None;
    store.insert_device(&d).await.unwrap();
    assert_eq!(store.device(t.id, d.id).await.unwrap(), Some(d.clone()));
    let d2 = device(t.id, "gw-2", DeviceState::Preauthorized);
    store.insert_device(&d2).await.unwrap();
    assert_eq!(store.device(t.id, d2.id).await.unwrap(), Some(d2));
}

pub async fn device_ids_are_unique_across_tenants(store: &dyn Store) {
    let a = new_tenant(store, "a").await;
    let b = new_tenant(store, "b").await;
    let d = device(a.id, "x", DeviceState::Accepted);
    store.insert_device(&d).await.unwrap();
    let mut clash = d.clone();
    clash.tenant_id = b.id;
    let err = store.insert_device(&clash).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err}");
    let err = store.insert_device(&d).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err}");
}

pub async fn devices_are_invisible_to_other_tenants(store: &dyn Store) {
    let a = new_tenant(store, "a").await;
    let b = new_tenant(store, "b").await;
    let d = device(a.id, "x", DeviceState::Accepted);
    store.insert_device(&d).await.unwrap();
    assert_eq!(store.device(b.id, d.id).await.unwrap(), None);
    let page = store
        .list_devices(
            b.id,
            &DeviceFilter::default(),
            &PageRequest::first(limit(10)),
        )
        .await
        .unwrap();
    assert!(page.items.is_empty() && page.next.is_none());
    assert_eq!(
        store
            .count_devices(b.id, &DeviceFilter::default())
            .await
            .unwrap(),
        0
    );
    let err = store
        .set_device_state(
            b.id,
            d.id,
            DeviceState::Accepted,
            DeviceState::Decommissioned,
            T0,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err}");
    assert_eq!(
        store.device(a.id, d.id).await.unwrap().map(|d| d.state),
        Some(DeviceState::Accepted)
    );
}

pub async fn device_pages_cover_everything_once(store: &dyn Store) {
    let t = new_tenant(store, "acme").await;
    let noise = new_tenant(store, "noise").await;
    let mut expected = BTreeSet::new();
    for i in 0..25 {
        let d = device(t.id, &format!("d{i}"), DeviceState::Accepted);
        expected.insert(d.id);
        store.insert_device(&d).await.unwrap();
        store
            .insert_device(&device(noise.id, &format!("n{i}"), DeviceState::Accepted))
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    let mut sizes = Vec::new();
    let mut req = PageRequest::first(limit(10));
    loop {
        let page = store
            .list_devices(t.id, &DeviceFilter::default(), &req)
            .await
            .unwrap();
        sizes.push(page.items.len());
        assert!(page.items.iter().all(|d| d.tenant_id == t.id));
        seen.extend(page.items.iter().map(|d| d.id));
        match page.next {
            Some(next) => {
                assert_eq!(Some(next), page.items.last().map(|d| d.id));
                req.after = Some(next);
            }
            None => break,
        }
    }
    assert_eq!(sizes, vec![10, 10, 5]);
    let sorted: Vec<_> = expected.iter().copied().collect();
    assert_eq!(
        seen, sorted,
        "pages are in id order, with nothing missing or repeated"
    );

    // An exact multiple of the page size ends without an empty extra page.
    let page = store
        .list_devices(
            t.id,
            &DeviceFilter::default(),
            &PageRequest::first(limit(25)),
        )
        .await
        .unwrap();
    assert_eq!(page.items.len(), 25);
    assert_eq!(page.next, None);
}

pub async fn device_filter_and_count(store: &dyn Store) {
    let t = new_tenant(store, "acme").await;
    for (i, s) in [
        DeviceState::Pending,
        DeviceState::Pending,
        DeviceState::Accepted,
        DeviceState::Rejected,
    ]
    .into_iter()
    .enumerate()
    {
        store
            .insert_device(&device(t.id, &format!("d{i}"), s))
            .await
            .unwrap();
    }
    let pending = DeviceFilter {
        state: Some(DeviceState::Pending),
        ..Default::default()
    };
    let page = store
        .list_devices(t.id, &pending, &PageRequest::first(limit(100)))
        .await
        .unwrap();
    assert_eq!(page.items.len(), 2);
    assert!(page.items.iter().all(|d| d.state == DeviceState::Pending));
    assert_eq!(store.count_devices(t.id, &pending).await.unwrap(), 2);
    assert_eq!(
        store
            .count_devices(t.id, &DeviceFilter::default())
            .await
            .unwrap(),
        4
    );
    let none = DeviceFilter {
        state: Some(DeviceState::Decommissioned),
        ..Default::default()
    };
    assert_eq!(store.count_devices(t.id, &none).await.unwrap(), 0);
}

pub async fn device_state_is_compare_and_set(store: &dyn Store) {
    let t = new_tenant(store, "acme").await;
    let d = device(t.id, "x", DeviceState::Pending);
    store.insert_device(&d).await.unwrap();
    let at = T0.plus_millis(1000);
    let moved = store
        .set_device_state(t.id, d.id, DeviceState::Pending, DeviceState::Accepted, at)
        .await
        .unwrap();
    assert_eq!(moved.state, DeviceState::Accepted);
    assert_eq!(moved.state_changed_at, at);
    assert_eq!(moved.updated_at, at);
    assert_eq!(moved.created_at, d.created_at);
    // A stale expectation fails and changes nothing.
    let err = store
        .set_device_state(t.id, d.id, DeviceState::Pending, DeviceState::Rejected, at)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err}");
    assert_eq!(store.device(t.id, d.id).await.unwrap(), Some(moved));
    let err = store
        .set_device_state(
            t.id,
            DeviceId::from_uuid(Uuid::now_v7()),
            DeviceState::Pending,
            DeviceState::Accepted,
            at,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err}");
}

pub async fn transitions_follow_the_core_rules(store: &dyn Store) {
    let t = new_tenant(store, "acme").await;
    let d = device(t.id, "x", DeviceState::Accepted);
    store.insert_device(&d).await.unwrap();
    let done = crate::transition_device(store, t.id, d.id, DeviceState::Decommissioned, T0)
        .await
        .unwrap();
    assert_eq!(done.state, DeviceState::Decommissioned);
    let err = crate::transition_device(store, t.id, d.id, DeviceState::Accepted, T0)
        .await
        .unwrap_err();
    assert!(matches!(err, TransitionError::NotAllowed(_)), "{err}");
    assert_eq!(
        store.device(t.id, d.id).await.unwrap().map(|d| d.state),
        Some(DeviceState::Decommissioned),
        "a decommissioned device stays decommissioned"
    );
}

pub async fn concurrent_transitions_have_one_winner(store: &dyn Store) {
    let t = new_tenant(store, "acme").await;
    let d = device(t.id, "x", DeviceState::Pending);
    store.insert_device(&d).await.unwrap();
    // Half try to accept, half to reject, all from `pending`: exactly one may win.
    let results = futures_join_all((0..8).map(|i| {
        let to = if i % 2 == 0 {
            DeviceState::Accepted
        } else {
            DeviceState::Rejected
        };
        store.set_device_state(t.id, d.id, DeviceState::Pending, to, T0.plus_millis(i))
    }))
    .await;
    let wins = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(wins, 1, "{results:?}");
    assert!(
        results
            .iter()
            .filter_map(|r| r.as_ref().err())
            .all(|e| matches!(e, StoreError::Conflict(_)))
    );
}

pub async fn enrollment_can_be_closed_per_tenant(store: &dyn Store) {
    let a = new_tenant(store, "a").await;
    let b = new_tenant(store, "b").await;
    assert!(a.enrollment_open);
    store.set_enrollment_open(a.id, false).await.unwrap();
    assert!(!store.tenant(a.id).await.unwrap().unwrap().enrollment_open);
    assert!(store.tenant(b.id).await.unwrap().unwrap().enrollment_open);
    store.set_enrollment_open(a.id, true).await.unwrap();
    assert!(store.tenant(a.id).await.unwrap().unwrap().enrollment_open);
    let err = store
        .set_enrollment_open(TenantId::from_uuid(Uuid::now_v7()), false)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err}");
}

fn enrollment_token(
    tenant: TenantId,
    max_uses: Option<u32>,
    expires_at: Option<Timestamp>,
) -> EnrollmentToken {
    EnrollmentToken {
        id: TokenId::from_uuid(Uuid::now_v7()),
        tenant_id: tenant,
        name: "factory line 3".into(),
        secret_hash: vec![1; 32],
        created_at: T0,
        expires_at,
        max_uses,
        uses: 0,
        revoked_at: None,
        device_type: Some("gw".into()),
    }
}

pub async fn enrollment_tokens_lifecycle(store: &dyn Store) {
    let t = new_tenant(store, "acme").await;
    let other = new_tenant(store, "other").await;
    let tok = enrollment_token(t.id, Some(2), Some(T0.plus_millis(1000)));
    store.create_enrollment_token(&tok).await.unwrap();
    assert_eq!(
        store
            .enrollment_token_for_authentication(tok.id)
            .await
            .unwrap(),
        Some(tok.clone())
    );
    // Uses are counted and stop at the maximum.
    let used = store
        .consume_enrollment_token(t.id, tok.id, T0)
        .await
        .unwrap();
    assert_eq!(used.uses, 1);
    store
        .consume_enrollment_token(t.id, tok.id, T0)
        .await
        .unwrap();
    let err = store
        .consume_enrollment_token(t.id, tok.id, T0)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err}");
    assert_eq!(
        store
            .enrollment_token_for_authentication(tok.id)
            .await
            .unwrap()
            .unwrap()
            .uses,
        2
    );
    // Expired tokens cannot be used.
    let exp = enrollment_token(t.id, None, Some(T0.plus_millis(10)));
    store.create_enrollment_token(&exp).await.unwrap();
    let err = store
        .consume_enrollment_token(t.id, exp.id, T0.plus_millis(10))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err}");
    // Revoked tokens cannot be used; revocation is tenant-scoped and happens once.
    let rev = enrollment_token(t.id, None, None);
    store.create_enrollment_token(&rev).await.unwrap();
    let err = store
        .revoke_enrollment_token(other.id, rev.id, T0)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err}");
    store
        .revoke_enrollment_token(t.id, rev.id, T0)
        .await
        .unwrap();
    let err = store
        .revoke_enrollment_token(t.id, rev.id, T0)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err}");
    let err = store
        .consume_enrollment_token(t.id, rev.id, T0)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err}");
    // Another tenant cannot use it at all.
    let err = store
        .consume_enrollment_token(other.id, exp.id, T0)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err}");
    // Listing pages through the tenant's tokens only.
    store
        .create_enrollment_token(&enrollment_token(other.id, None, None))
        .await
        .unwrap();
    let first = store
        .list_enrollment_tokens(t.id, &PageRequest::first(limit(2)))
        .await
        .unwrap();
    assert_eq!(first.items.len(), 2);
    let rest = store
        .list_enrollment_tokens(
            t.id,
            &PageRequest {
                after: first.next,
                limit: limit(2),
            },
        )
        .await
        .unwrap();
    assert_eq!(rest.items.len(), 1);
    assert_eq!(rest.next, None);
    let ids: BTreeSet<_> = first
        .items
        .iter()
        .chain(&rest.items)
        .map(|t| t.id)
        .collect();
    assert_eq!(ids, BTreeSet::from([tok.id, exp.id, rev.id]));
}

pub async fn enrollment_token_uses_are_atomic(store: &dyn Store) {
    let t = new_tenant(store, "acme").await;
    let tok = enrollment_token(t.id, Some(3), None);
    store.create_enrollment_token(&tok).await.unwrap();
    let results =
        futures_join_all((0..10).map(|_| store.consume_enrollment_token(t.id, tok.id, T0))).await;
    assert_eq!(
        results.iter().filter(|r| r.is_ok()).count(),
        3,
        "{results:?}"
    );
    assert_eq!(
        store
            .enrollment_token_for_authentication(tok.id)
            .await
            .unwrap()
            .unwrap()
            .uses,
        3
    );
}

pub async fn device_keys_are_unique_per_tenant(store: &dyn Store) {
    let a = new_tenant(store, "a").await;
    let b = new_tenant(store, "b").await;
    let fp = "ab".repeat(32);
    let d = device(a.id, "x", DeviceState::Pending).with_key_fingerprint(fp.clone());
    store.insert_device(&d).await.unwrap();
    assert_eq!(
        store.device_by_key(a.id, &fp).await.unwrap(),
        Some(d.clone())
    );
    assert_eq!(store.device_by_key(b.id, &fp).await.unwrap(), None);
    let dup = device(a.id, "y", DeviceState::Pending).with_key_fingerprint(fp.clone());
    let err = store.insert_device(&dup).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err}");
    // The same key in another tenant is another device; devices without keys do not collide.
    store
        .insert_device(&device(b.id, "x", DeviceState::Pending).with_key_fingerprint(fp))
        .await
        .unwrap();
    store
        .insert_device(&device(a.id, "n1", DeviceState::Preauthorized))
        .await
        .unwrap();
    store
        .insert_device(&device(a.id, "n2", DeviceState::Preauthorized))
        .await
        .unwrap();
}

pub async fn certificates_lifecycle(store: &dyn Store) {
    let t = new_tenant(store, "acme").await;
    let other = new_tenant(store, "other").await;
    let d = device(t.id, "x", DeviceState::Accepted).with_key_fingerprint("cd".repeat(32));
    store.insert_device(&d).await.unwrap();
    let cert = |serial: &str| DeviceCertificate {
        serial: serial.into(),
        tenant_id: t.id,
        device_id: d.id,
        key_fingerprint: "cd".repeat(32),
        not_before: T0,
        not_after: T0.plus_millis(90 * 86_400_000),
        issued_at: T0,
        revoked_at: None,
    };
    store.insert_certificate(&cert("0a1b")).await.unwrap();
    store.insert_certificate(&cert("0a1c")).await.unwrap();
    assert_eq!(
        store.certificate_for_authentication("0a1b").await.unwrap(),
        Some(cert("0a1b"))
    );
    assert_eq!(
        store.certificate_for_authentication("ffff").await.unwrap(),
        None
    );
    let err = store.insert_certificate(&cert("0a1b")).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err}");
    // A certificate for a device that does not exist (in that tenant) is refused.
    let mut stray = cert("0a1d");
    stray.tenant_id = other.id;
    let err = store.insert_certificate(&stray).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err}");

    assert_eq!(
        store.device_certificates(t.id, d.id).await.unwrap().len(),
        2
    );
    assert!(
        store
            .device_certificates(other.id, d.id)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store
            .revoke_device_certificates(other.id, d.id, T0)
            .await
            .unwrap(),
        0
    );
    let at = T0.plus_millis(5);
    assert_eq!(
        store
            .revoke_device_certificates(t.id, d.id, at)
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        store
            .revoke_device_certificates(t.id, d.id, at)
            .await
            .unwrap(),
        0
    );
    let got = store
        .certificate_for_authentication("0a1c")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.revoked_at, Some(at));
    assert!(!got.is_valid_at(at));
}

pub async fn last_seen_only_moves_forward(store: &dyn Store) {
    let t = new_tenant(store, "acme").await;
    let other = new_tenant(store, "other").await;
    let d = device(t.id, "x", DeviceState::Accepted);
    store.insert_device(&d).await.unwrap();
    assert_eq!(
        store
            .device(t.id, d.id)
            .await
            .unwrap()
            .unwrap()
            .last_seen_at,
        None
    );
    let later = T0.plus_millis(60_000);
    store.record_device_seen(t.id, d.id, later).await.unwrap();
    store.record_device_seen(t.id, d.id, T0).await.unwrap();
    assert_eq!(
        store
            .device(t.id, d.id)
            .await
            .unwrap()
            .unwrap()
            .last_seen_at,
        Some(later),
        "an older sighting does not move last-seen back"
    );
    // Another tenant cannot touch it; an unknown device is nothing to record.
    store
        .record_device_seen(other.id, d.id, later.plus_millis(1))
        .await
        .unwrap();
    assert_eq!(
        store
            .device(t.id, d.id)
            .await
            .unwrap()
            .unwrap()
            .last_seen_at,
        Some(later)
    );
    store
        .record_device_seen(t.id, DeviceId::from_uuid(Uuid::now_v7()), later)
        .await
        .unwrap();
}

fn connection(tenant: TenantId, device: DeviceId, at: Timestamp) -> DeviceConnection {
    DeviceConnection {
        id: ConnectionId::from_uuid(Uuid::now_v7()),
        tenant_id: tenant,
        device_id: device,
        transport: Transport::Mqtt,
        protocol: "mqtt/5".into(),
        remote_addr: "192.0.2.10:51234".into(),
        client_id: Some(format!("{device}")),
        connected_at: at,
        disconnected_at: None,
        disconnect_reason: None,
    }
}

async fn all_connections(
    store: &dyn Store,
    tenant: TenantId,
    device: DeviceId,
) -> Vec<DeviceConnection> {
    store
        .device_connections(tenant, device, &PageRequest::first(limit(1000)))
        .await
        .unwrap()
        .items
}

pub async fn connections_round_trip_and_close_once(store: &dyn Store) {
    let t = new_tenant(store, "acme").await;
    let d = device(t.id, "x", DeviceState::Accepted);
    store.insert_device(&d).await.unwrap();
    let c = connection(t.id, d.id, T0);
    store.open_connection(&c).await.unwrap();
    assert_eq!(all_connections(store, t.id, d.id).await, vec![c.clone()]);
    // Every field round-trips, including an HTTPS connection without a client id.
    let mut https = connection(t.id, d.id, T0.plus_millis(1));
    https.transport = Transport::Https;
    https.protocol = "http/1.1".into();
    https.remote_addr = "[2001:db8::7]:443".into();
    https.client_id = None;
    store.open_connection(&https).await.unwrap();
    let got = all_connections(store, t.id, d.id).await;
    assert!(got.contains(&https) && got.contains(&c), "{got:?}");
    // The id is the primary key.
    let err = store.open_connection(&c).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err}");

    let closed_at = T0.plus_millis(500);
    store
        .close_connection(t.id, c.id, closed_at, "keep-alive timeout")
        .await
        .unwrap();
    let expected = DeviceConnection {
        disconnected_at: Some(closed_at),
        disconnect_reason: Some("keep-alive timeout".into()),
        ..c.clone()
    };
    assert!(!expected.is_open());
    // Closing again is not an error and keeps the first close.
    store
        .close_connection(t.id, c.id, closed_at.plus_millis(1), "server shutdown")
        .await
        .unwrap();
    let got = all_connections(store, t.id, d.id).await;
    assert!(got.contains(&expected), "{got:?}");
    assert!(
        got.contains(&https),
        "the other connection stays open: {got:?}"
    );
    // An unknown connection is NotFound.
    let err = store
        .close_connection(
            t.id,
            ConnectionId::from_uuid(Uuid::now_v7()),
            closed_at,
            "x",
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err}");
}

pub async fn connections_are_tenant_scoped(store: &dyn Store) {
    let a = new_tenant(store, "a").await;
    let b = new_tenant(store, "b").await;
    let d = device(a.id, "x", DeviceState::Accepted);
    store.insert_device(&d).await.unwrap();
    // A connection needs the device in the connection's own tenant.
    let err = store
        .open_connection(&connection(b.id, d.id, T0))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err}");
    let err = store
        .open_connection(&connection(a.id, DeviceId::from_uuid(Uuid::now_v7()), T0))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err}");

    let c = connection(a.id, d.id, T0);
    store.open_connection(&c).await.unwrap();
    // Another tenant can neither see nor close it.
    assert!(all_connections(store, b.id, d.id).await.is_empty());
    let err = store
        .close_connection(b.id, c.id, T0.plus_millis(1), "x")
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err}");
    assert_eq!(all_connections(store, a.id, d.id).await, vec![c]);
}

pub async fn connection_history_pages_newest_first(store: &dyn Store) {
    let t = new_tenant(store, "acme").await;
    let d = device(t.id, "x", DeviceState::Accepted);
    let other = device(t.id, "y", DeviceState::Accepted);
    store.insert_device(&d).await.unwrap();
    store.insert_device(&other).await.unwrap();
    let mut ids = Vec::new();
    for i in 0..3 {
        let c = connection(t.id, d.id, T0.plus_millis(i));
        ids.push(c.id);
        store.open_connection(&c).await.unwrap();
        store
            .close_connection(t.id, c.id, T0.plus_millis(i + 1), "client disconnect")
            .await
            .unwrap();
        // Another device's connections never show up in this one's history.
        store
            .open_connection(&connection(t.id, other.id, T0.plus_millis(i)))
            .await
            .unwrap();
    }
    ids.sort_unstable_by(|x, y| y.cmp(x));
    let first = store
        .device_connections(t.id, d.id, &PageRequest::first(limit(2)))
        .await
        .unwrap();
    assert_eq!(
        first.items.iter().map(|c| c.id).collect::<Vec<_>>(),
        ids[..2]
    );
    assert_eq!(first.next, Some(ids[1]));
    let second = store
        .device_connections(
            t.id,
            d.id,
            &PageRequest {
                after: first.next,
                limit: limit(2),
            },
        )
        .await
        .unwrap();
    assert_eq!(
        second.items.iter().map(|c| c.id).collect::<Vec<_>>(),
        ids[2..],
        "the second page holds the older connections"
    );
    assert_eq!(second.next, None);
    assert!(
        first
            .items
            .iter()
            .chain(&second.items)
            .all(|c| c.device_id == d.id && !c.is_open())
    );
    // An exact fit ends without an empty extra page.
    let all = store
        .device_connections(t.id, d.id, &PageRequest::first(limit(3)))
        .await
        .unwrap();
    assert_eq!(all.items.len(), 3);
    assert_eq!(all.next, None);
}

pub async fn online_devices_are_tenant_scoped(store: &dyn Store) {
    let a = new_tenant(store, "a").await;
    let b = new_tenant(store, "b").await;
    assert!(store.online_devices(a.id, &[]).await.unwrap().is_empty());

    // More devices than one query takes at once, online ones spread across the chunks.
    let mut devices = Vec::new();
    for i in 0..150 {
        let d = device(a.id, &format!("d{i}"), DeviceState::Accepted);
        store.insert_device(&d).await.unwrap();
        devices.push(d.id);
    }
    let mut expected = HashSet::new();
    for (i, id) in devices.iter().enumerate() {
        if i % 7 == 0 {
            store
                .open_connection(&connection(a.id, *id, T0))
                .await
                .unwrap();
            expected.insert(*id);
        } else if i % 7 == 1 {
            // Only closed connections: offline.
            let c = connection(a.id, *id, T0);
            store.open_connection(&c).await.unwrap();
            store
                .close_connection(a.id, c.id, T0.plus_millis(1), "client disconnect")
                .await
                .unwrap();
        }
    }
    // A device with one open and one closed connection is online.
    let twice = devices[14];
    let c = connection(a.id, twice, T0.plus_millis(2));
    store.open_connection(&c).await.unwrap();
    store
        .close_connection(a.id, c.id, T0.plus_millis(3), "client disconnect")
        .await
        .unwrap();
    assert!(expected.contains(&twice));

    // An online device of another tenant never shows up, even when asked for by id.
    let foreign = device(b.id, "f", DeviceState::Accepted);
    store.insert_device(&foreign).await.unwrap();
    store
        .open_connection(&connection(b.id, foreign.id, T0))
        .await
        .unwrap();

    let mut asked = devices.clone();
    asked.push(foreign.id);
    asked.push(DeviceId::from_uuid(Uuid::now_v7()));
    asked.push(devices[0]); // duplicates are harmless
    assert_eq!(store.online_devices(a.id, &asked).await.unwrap(), expected);
    assert_eq!(
        store.online_devices(a.id, &[devices[0]]).await.unwrap(),
        HashSet::from([devices[0]])
    );
    assert!(
        store
            .online_devices(a.id, &[devices[1], foreign.id])
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store.online_devices(b.id, &asked).await.unwrap(),
        HashSet::from([foreign.id])
    );
}

pub async fn close_open_connections_covers_every_tenant(store: &dyn Store) {
    let a = new_tenant(store, "a").await;
    let b = new_tenant(store, "b").await;
    let da = device(a.id, "x", DeviceState::Accepted);
    let db = device(b.id, "y", DeviceState::Accepted);
    store.insert_device(&da).await.unwrap();
    store.insert_device(&db).await.unwrap();
    let open_a = connection(a.id, da.id, T0);
    let open_b = connection(b.id, db.id, T0);
    let closed = connection(a.id, da.id, T0);
    for c in [&open_a, &open_b, &closed] {
        store.open_connection(c).await.unwrap();
    }
    let first_close = T0.plus_millis(1);
    store
        .close_connection(a.id, closed.id, first_close, "client disconnect")
        .await
        .unwrap();

    let at = T0.plus_millis(10);
    assert_eq!(
        store
            .close_open_connections(at, "server restart")
            .await
            .unwrap(),
        2
    );
    assert!(
        store
            .online_devices(a.id, &[da.id])
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .online_devices(b.id, &[db.id])
            .await
            .unwrap()
            .is_empty()
    );
    let history = all_connections(store, a.id, da.id).await;
    let by_id = |id: ConnectionId| history.iter().find(|c| c.id == id).cloned().unwrap();
    assert_eq!(by_id(open_a.id).disconnected_at, Some(at));
    assert_eq!(
        by_id(open_a.id).disconnect_reason.as_deref(),
        Some("server restart")
    );
    assert_eq!(
        by_id(closed.id).disconnected_at,
        Some(first_close),
        "an already closed connection keeps its first close"
    );
    assert_eq!(
        by_id(closed.id).disconnect_reason.as_deref(),
        Some("client disconnect")
    );
    assert_eq!(
        all_connections(store, b.id, db.id).await[0].disconnected_at,
        Some(at)
    );
    // Nothing left to close.
    assert_eq!(
        store
            .close_open_connections(at.plus_millis(1), "server restart")
            .await
            .unwrap(),
        0
    );
}

fn credential(tenant: TenantId, device: DeviceId, hash: u8, at: Timestamp) -> DeviceCredential {
    DeviceCredential {
        tenant_id: tenant,
        device_id: device,
        secret_hash: vec![hash; 32],
        created_at: at,
    }
}

pub async fn device_credentials_rotate(store: &dyn Store) {
    let t = new_tenant(store, "acme").await;
    let d = device(t.id, "sensor", DeviceState::Accepted);
    let other = device(t.id, "other", DeviceState::Accepted);
    store.insert_device(&d).await.unwrap();
    store.insert_device(&other).await.unwrap();
    assert_eq!(
        store
            .device_credential_for_authentication(d.id)
            .await
            .unwrap(),
        None
    );
    let first = credential(t.id, d.id, 1, T0);
    store.set_device_credential(&first).await.unwrap();
    assert_eq!(
        store
            .device_credential_for_authentication(d.id)
            .await
            .unwrap(),
        Some(first)
    );
    // Setting it again replaces it: one credential per device.
    let rotated = credential(t.id, d.id, 2, T0.plus_millis(1000));
    store.set_device_credential(&rotated).await.unwrap();
    assert_eq!(
        store
            .device_credential_for_authentication(d.id)
            .await
            .unwrap(),
        Some(rotated.clone())
    );
    // Another device's credential is its own.
    let theirs = credential(t.id, other.id, 3, T0);
    store.set_device_credential(&theirs).await.unwrap();
    assert_eq!(
        store
            .device_credential_for_authentication(other.id)
            .await
            .unwrap(),
        Some(theirs)
    );
    assert_eq!(
        store
            .device_credential_for_authentication(d.id)
            .await
            .unwrap(),
        Some(rotated)
    );
    // Deleting says whether there was one.
    assert!(store.delete_device_credential(t.id, d.id).await.unwrap());
    assert!(!store.delete_device_credential(t.id, d.id).await.unwrap());
    assert_eq!(
        store
            .device_credential_for_authentication(d.id)
            .await
            .unwrap(),
        None
    );
    assert!(
        store
            .device_credential_for_authentication(other.id)
            .await
            .unwrap()
            .is_some()
    );
}

pub async fn device_credentials_are_tenant_scoped(store: &dyn Store) {
    let a = new_tenant(store, "a").await;
    let b = new_tenant(store, "b").await;
    let d = device(a.id, "sensor", DeviceState::Accepted);
    store.insert_device(&d).await.unwrap();
    // No credential for a device that does not exist in the credential's tenant, whether or
    // not the device already has one.
    let err = store
        .set_device_credential(&credential(b.id, d.id, 9, T0))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err}");
    let err = store
        .set_device_credential(&credential(
            a.id,
            DeviceId::from_uuid(Uuid::now_v7()),
            9,
            T0,
        ))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err}");
    let mine = credential(a.id, d.id, 1, T0);
    store.set_device_credential(&mine).await.unwrap();
    let err = store
        .set_device_credential(&credential(b.id, d.id, 9, T0.plus_millis(1)))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err}");
    // Another tenant cannot delete it.
    assert!(!store.delete_device_credential(b.id, d.id).await.unwrap());
    assert_eq!(
        store
            .device_credential_for_authentication(d.id)
            .await
            .unwrap(),
        Some(mine)
    );
}

fn metric(name: &str) -> MetricName {
    MetricName::parse(name).expect("test metric names are valid")
}

fn sample(name: &str, at: Timestamp, value: f64) -> Sample {
    Sample {
        metric: metric(name),
        at,
        value,
    }
}

const BEGINNING: Timestamp = Timestamp::from_unix_millis(i64::MIN);
const END: Timestamp = Timestamp::from_unix_millis(i64::MAX);

/// Every sample of one metric of a device, oldest first (at most 1000).
async fn samples_of(
    store: &dyn Store,
    tenant: TenantId,
    device: DeviceId,
    name: &str,
) -> Vec<Sample> {
    let page = store
        .query_samples(tenant, device, &metric(name), BEGINNING, END, limit(1000))
        .await
        .unwrap();
    assert_eq!(page.next, None, "more than 1000 samples of {name}");
    page.items
}

pub async fn samples_round_trip(store: &dyn Store) {
    let t = new_tenant(store, "acme").await;
    let d = device(t.id, "x", DeviceState::Accepted);
    store.insert_device(&d).await.unwrap();
    let given = vec![
        sample("temperature", T0.plus_millis(2000), -3.25),
        sample("temperature", T0, 21.5),
        sample("cpu.load", T0, 0.1 + 0.2),
        sample("temperature", T0.plus_millis(1000), 21.75),
        sample("big", T0, f64::MAX),
        sample("tiny", T0, f64::MIN_POSITIVE / 4.0),
        sample("int", T0, 9_007_199_254_740_992.0),
        sample("disk:/dev/sda1", T0, 0.0),
    ];
    assert_eq!(store.insert_samples(t.id, d.id, &given).await.unwrap(), 8);
    // Oldest first, every value bit for bit.
    let temperature = samples_of(store, t.id, d.id, "temperature").await;
    assert_eq!(
        temperature,
        vec![
            sample("temperature", T0, 21.5),
            sample("temperature", T0.plus_millis(1000), 21.75),
            sample("temperature", T0.plus_millis(2000), -3.25),
        ]
    );
    for s in given.iter().filter(|s| s.metric.as_str() != "temperature") {
        let got = samples_of(store, t.id, d.id, s.metric.as_str()).await;
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].at, s.at);
        assert_eq!(got[0].value.to_bits(), s.value.to_bits(), "{}", s.metric);
    }
    assert!(samples_of(store, t.id, d.id, "humidity").await.is_empty());
    assert_eq!(
        store.latest_samples(t.id, d.id).await.unwrap(),
        vec![
            sample("big", T0, f64::MAX),
            sample("cpu.load", T0, 0.1 + 0.2),
            sample("disk:/dev/sda1", T0, 0.0),
            sample("int", T0, 9_007_199_254_740_992.0),
            sample("temperature", T0.plus_millis(2000), -3.25),
            sample("tiny", T0, f64::MIN_POSITIVE / 4.0),
        ]
    );
}

pub async fn samples_replace_on_the_same_timestamp(store: &dyn Store) {
    let t = new_tenant(store, "acme").await;
    let d = device(t.id, "x", DeviceState::Accepted);
    store.insert_device(&d).await.unwrap();
    let first = [sample("t", T0, 1.0), sample("t", T0.plus_millis(1), 2.0)];
    assert_eq!(store.insert_samples(t.id, d.id, &first).await.unwrap(), 2);
    // The same message delivered again: written again, stored once.
    assert_eq!(store.insert_samples(t.id, d.id, &first).await.unwrap(), 2);
    assert_eq!(samples_of(store, t.id, d.id, "t").await, first.to_vec());
    // A new value for an existing time replaces the old one; other times stay.
    assert_eq!(
        store
            .insert_samples(t.id, d.id, &[sample("t", T0, 10.0)])
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        samples_of(store, t.id, d.id, "t").await,
        vec![sample("t", T0, 10.0), sample("t", T0.plus_millis(1), 2.0)]
    );
    // Within one call the last value for a key wins and the key counts once.
    let repeated = [
        sample("h", T0, 1.0),
        sample("h", T0, 2.0),
        sample("h", T0, 3.0),
    ];
    assert_eq!(
        store.insert_samples(t.id, d.id, &repeated).await.unwrap(),
        1
    );
    assert_eq!(
        samples_of(store, t.id, d.id, "h").await,
        vec![sample("h", T0, 3.0)]
    );
    // Also when the repeats fall into different statements of one call.
    let mut many: Vec<Sample> = (0..150)
        .map(|i| sample("m", T0.plus_millis(i), 1.0))
        .collect();
    many.push(sample("m", T0, 99.0));
    assert_eq!(store.insert_samples(t.id, d.id, &many).await.unwrap(), 150);
    let got = samples_of(store, t.id, d.id, "m").await;
    assert_eq!(got.len(), 150);
    assert_eq!(got[0], sample("m", T0, 99.0));
    // The same metric and time of another device is another sample.
    let other = device(t.id, "y", DeviceState::Accepted);
    store.insert_device(&other).await.unwrap();
    assert_eq!(
        store
            .insert_samples(t.id, other.id, &[sample("t", T0, 5.0)])
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        samples_of(store, t.id, other.id, "t").await,
        vec![sample("t", T0, 5.0)]
    );
    assert_eq!(
        samples_of(store, t.id, d.id, "t").await[0],
        sample("t", T0, 10.0)
    );
}

pub async fn sample_writes_are_all_or_nothing(store: &dyn Store) {
    let a = new_tenant(store, "a").await;
    let b = new_tenant(store, "b").await;
    let d = device(a.id, "x", DeviceState::Accepted);
    store.insert_device(&d).await.unwrap();
    let stored = [sample("t", T0, 1.0), sample("t", T0.plus_millis(1), 2.0)];
    store.insert_samples(a.id, d.id, &stored).await.unwrap();
    // The device's samples are as they were, and nothing was added anywhere.
    let check = async || {
        assert_eq!(samples_of(store, a.id, d.id, "t").await, stored.to_vec());
        assert!(samples_of(store, a.id, d.id, "new").await.is_empty());
        assert!(samples_of(store, b.id, d.id, "t").await.is_empty());
    };

    // The device is in another tenant: new keys, existing keys, both, many (several
    // statements): refused whole.
    let new_keys: Vec<Sample> = (0..5)
        .map(|i| sample("new", T0.plus_millis(i), 7.0))
        .collect();
    let existing_keys = [
        sample("t", T0, 100.0),
        sample("t", T0.plus_millis(1), 200.0),
    ];
    let mut both = existing_keys.to_vec();
    both.extend(new_keys.iter().cloned());
    let mut many: Vec<Sample> = (0..250)
        .map(|i| sample("t", T0.plus_millis(i), 9.0))
        .collect();
    many.extend((0..250).map(|i| sample("new", T0.plus_millis(i), 9.0)));
    for attempt in [
        &new_keys[..],
        &existing_keys[..],
        &both[..],
        &many[..],
        &[][..],
    ] {
        let err = store.insert_samples(b.id, d.id, attempt).await.unwrap_err();
        assert!(matches!(err, StoreError::NotFound(_)), "{err}");
        check().await;
    }
    // A device that does not exist anywhere.
    let ghost = DeviceId::from_uuid(Uuid::now_v7());
    for attempt in [&new_keys[..], &[][..]] {
        let err = store
            .insert_samples(a.id, ghost, attempt)
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::NotFound(_)), "{err}");
    }
    // A value that is not a finite number spoils the whole call, wherever it is.
    for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let mut with_bad = many.clone();
        with_bad.push(sample("new", T0.plus_millis(1000), bad));
        let err = store
            .insert_samples(a.id, d.id, &with_bad)
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Internal(_)), "{err}");
        check().await;
    }
    // Nothing to write for a device of the tenant is fine.
    assert_eq!(store.insert_samples(a.id, d.id, &[]).await.unwrap(), 0);
    check().await;
}

pub async fn sample_reads_are_tenant_scoped(store: &dyn Store) {
    let a = new_tenant(store, "a").await;
    let b = new_tenant(store, "b").await;
    let d = device(a.id, "x", DeviceState::Accepted);
    let neighbour = device(a.id, "y", DeviceState::Accepted);
    let foreign = device(b.id, "z", DeviceState::Accepted);
    for dev in [&d, &neighbour, &foreign] {
        store.insert_device(dev).await.unwrap();
    }
    store
        .insert_samples(a.id, d.id, &[sample("t", T0, 1.0)])
        .await
        .unwrap();
    store
        .insert_samples(a.id, neighbour.id, &[sample("t", T0.plus_millis(1), 2.0)])
        .await
        .unwrap();
    store
        .insert_samples(b.id, foreign.id, &[sample("t", T0.plus_millis(2), 3.0)])
        .await
        .unwrap();
    // Another tenant sees nothing of the device, even by its id.
    let page = store
        .query_samples(b.id, d.id, &metric("t"), BEGINNING, END, limit(10))
        .await
        .unwrap();
    assert!(page.items.is_empty() && page.next.is_none());
    assert!(store.latest_samples(b.id, d.id).await.unwrap().is_empty());
    assert!(
        store
            .latest_samples(a.id, foreign.id)
            .await
            .unwrap()
            .is_empty()
    );
    // Each device sees its own samples only.
    assert_eq!(
        samples_of(store, a.id, d.id, "t").await,
        vec![sample("t", T0, 1.0)]
    );
    assert_eq!(
        store.latest_samples(a.id, neighbour.id).await.unwrap(),
        vec![sample("t", T0.plus_millis(1), 2.0)]
    );
    assert_eq!(
        store.latest_samples(b.id, foreign.id).await.unwrap(),
        vec![sample("t", T0.plus_millis(2), 3.0)]
    );
}

pub async fn sample_ranges_include_from_and_exclude_to(store: &dyn Store) {
    let t = new_tenant(store, "acme").await;
    let d = device(t.id, "x", DeviceState::Accepted);
    store.insert_device(&d).await.unwrap();
    let at = |i: i64| T0.plus_millis(i);
    let samples: Vec<Sample> = (0..4).map(|i| sample("t", at(i), i as f64)).collect();
    store.insert_samples(t.id, d.id, &samples).await.unwrap();
    store
        .insert_samples(
            t.id,
            d.id,
            &[sample("h", at(1), 9.0), sample("t2", at(1), 9.0)],
        )
        .await
        .unwrap();
    let range = async |from: Timestamp, to: Timestamp| {
        store
            .query_samples(t.id, d.id, &metric("t"), from, to, limit(100))
            .await
            .unwrap()
            .items
            .iter()
            .map(|s| s.at)
            .collect::<Vec<_>>()
    };
    assert_eq!(range(at(1), at(3)).await, vec![at(1), at(2)]);
    assert_eq!(range(at(0), at(4)).await, vec![at(0), at(1), at(2), at(3)]);
    assert_eq!(range(at(3), at(4)).await, vec![at(3)]);
    assert_eq!(range(at(1), at(2)).await, vec![at(1)]);
    assert_eq!(range(at(1), at(1)).await, vec![], "an empty range");
    assert_eq!(range(at(3), at(1)).await, vec![], "a reversed range");
    assert_eq!(range(at(4), END).await, vec![]);
    assert_eq!(range(BEGINNING, at(0)).await, vec![]);
    assert_eq!(range(BEGINNING, END).await.len(), 4);
}

pub async fn sample_queries_page_by_limit(store: &dyn Store) {
    let t = new_tenant(store, "acme").await;
    let d = device(t.id, "x", DeviceState::Accepted);
    store.insert_device(&d).await.unwrap();
    // Every 10 s, inserted newest first.
    let samples: Vec<Sample> = (0..25)
        .rev()
        .map(|i| sample("t", T0.plus_millis(i * 10_000), i as f64))
        .collect();
    store.insert_samples(t.id, d.id, &samples).await.unwrap();
    let to = T0.plus_millis(1_000_000);
    let mut from = T0;
    let mut seen = Vec::new();
    let mut sizes = Vec::new();
    loop {
        let page = store
            .query_samples(t.id, d.id, &metric("t"), from, to, limit(10))
            .await
            .unwrap();
        sizes.push(page.items.len());
        seen.extend(page.items.iter().map(|s| s.value));
        match page.next {
            Some(next) => {
                assert_eq!(Some(next), page.items.last().map(|s| s.at));
                from = next.plus_millis(1);
            }
            None => break,
        }
    }
    assert_eq!(sizes, vec![10, 10, 5]);
    assert_eq!(seen, (0..25).map(|i| i as f64).collect::<Vec<_>>());
    // An exact fit ends without an empty extra page; one short says more follow.
    let all = store
        .query_samples(t.id, d.id, &metric("t"), T0, to, limit(25))
        .await
        .unwrap();
    assert_eq!((all.items.len(), all.next), (25, None));
    let short = store
        .query_samples(t.id, d.id, &metric("t"), T0, to, limit(24))
        .await
        .unwrap();
    assert_eq!(short.items.len(), 24);
    assert_eq!(short.next, Some(T0.plus_millis(230_000)));
    let one = store
        .query_samples(t.id, d.id, &metric("t"), T0, to, limit(1))
        .await
        .unwrap();
    assert_eq!(one.items, vec![sample("t", T0, 0.0)]);
    assert_eq!(one.next, Some(T0));
}

pub async fn latest_samples_are_the_newest_per_metric(store: &dyn Store) {
    let t = new_tenant(store, "acme").await;
    let d = device(t.id, "x", DeviceState::Accepted);
    let other = device(t.id, "y", DeviceState::Accepted);
    store.insert_device(&d).await.unwrap();
    store.insert_device(&other).await.unwrap();
    assert!(store.latest_samples(t.id, d.id).await.unwrap().is_empty());
    assert!(
        store
            .latest_samples(t.id, DeviceId::from_uuid(Uuid::now_v7()))
            .await
            .unwrap()
            .is_empty()
    );
    // Names whose bytewise order differs from a natural-language collation.
    let names = [
        "b1", "Zeta", "alpha", "a_b", "a.b", "a-b", "a:b", "a/b", "a0", "B2", "A", "a", "9",
    ];
    let mut expected = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let newest = T0.plus_millis(1000 + i as i64);
        // Newest written first, then older ones: the newest is by time, not by arrival.
        store
            .insert_samples(t.id, d.id, &[sample(name, newest, i as f64)])
            .await
            .unwrap();
        let older: Vec<Sample> = (0..3)
            .map(|k| sample(name, T0.plus_millis(k), -1.0))
            .collect();
        store.insert_samples(t.id, d.id, &older).await.unwrap();
        expected.push(sample(name, newest, i as f64));
    }
    // Another device's newer samples of the same metrics do not count.
    let theirs: Vec<Sample> = names
        .iter()
        .map(|n| sample(n, T0.plus_millis(5000), 42.0))
        .collect();
    store.insert_samples(t.id, other.id, &theirs).await.unwrap();
    // A replaced newest value shows its new value.
    store
        .insert_samples(t.id, d.id, &[sample("alpha", T0.plus_millis(1002), 7.5)])
        .await
        .unwrap();
    expected[2].value = 7.5;
    expected.sort_by(|x, y| {
        x.metric
            .as_str()
            .as_bytes()
            .cmp(y.metric.as_str().as_bytes())
    });
    let got = store.latest_samples(t.id, d.id).await.unwrap();
    assert_eq!(
        got.iter().map(|s| s.metric.as_str()).collect::<Vec<_>>(),
        vec![
            "9", "A", "B2", "Zeta", "a", "a-b", "a.b", "a/b", "a0", "a:b", "a_b", "alpha", "b1"
        ]
    );
    assert_eq!(got, expected);
}

pub async fn a_thousand_samples_in_one_call(store: &dyn Store) {
    let t = new_tenant(store, "acme").await;
    let d = device(t.id, "x", DeviceState::Accepted);
    store.insert_device(&d).await.unwrap();
    // What one full payload carries: 10 metrics, 100 times each.
    let batch: Vec<Sample> = (0..1000)
        .map(|i| sample(&format!("m{}", i % 10), T0.plus_millis(i / 10), i as f64))
        .collect();
    assert_eq!(
        store.insert_samples(t.id, d.id, &batch).await.unwrap(),
        1000
    );
    // Delivered again, with some new samples beyond a multiple of the statement size.
    let mut again = batch.clone();
    again.extend(
        (1000..1037).map(|i| sample(&format!("m{}", i % 10), T0.plus_millis(i / 10), i as f64)),
    );
    assert_eq!(
        store.insert_samples(t.id, d.id, &again).await.unwrap(),
        1037
    );
    let mut total = 0;
    for m in 0..10 {
        let got = samples_of(store, t.id, d.id, &format!("m{m}")).await;
        assert!(got.windows(2).all(|w| w[0].at < w[1].at));
        assert!(got.iter().all(|s| s.value as i64 % 10 == m));
        total += got.len();
    }
    assert_eq!(total, 1037);
    let latest = store.latest_samples(t.id, d.id).await.unwrap();
    assert_eq!(latest.len(), 10);
    assert!(
        latest
            .iter()
            .all(|s| s.at == T0.plus_millis(103) || s.at == T0.plus_millis(102))
    );
}

fn inventory(json: &str) -> Inventory {
    parse_inventory(json.as_bytes()).expect("test inventories are valid")
}

pub async fn inventory_replaces_whole_and_tracks_changes(store: &dyn Store) {
    let t = new_tenant(store, "acme").await;
    let d = device(t.id, "x", DeviceState::Accepted);
    store.insert_device(&d).await.unwrap();
    assert_eq!(store.device_inventory(t.id, d.id).await.unwrap(), None);

    let first = inventory(
        r#"{"os.id":"debian","cpu.count":4,"ota":true,"ips":["192.0.2.1","192.0.2.2"],"load":0.1}"#,
    );
    assert!(store.put_inventory(t.id, d.id, &first, T0).await.unwrap());
    let got = store.device_inventory(t.id, d.id).await.unwrap().unwrap();
    assert_eq!(got.attributes, first);
    assert_eq!((got.updated_at, got.reported_at), (T0, T0));

    // The same attributes again: reported, not changed.
    let later = T0.plus_millis(60_000);
    assert!(
        !store
            .put_inventory(t.id, d.id, &first, later)
            .await
            .unwrap()
    );
    let got = store.device_inventory(t.id, d.id).await.unwrap().unwrap();
    assert_eq!((got.updated_at, got.reported_at), (T0, later));

    // A different set replaces the whole: attributes not reported again are gone.
    let second = inventory(r#"{"os.id":"debian","cpu.count":8}"#);
    let last = T0.plus_millis(120_000);
    assert!(
        store
            .put_inventory(t.id, d.id, &second, last)
            .await
            .unwrap()
    );
    let got = store.device_inventory(t.id, d.id).await.unwrap().unwrap();
    assert_eq!(got.attributes, second);
    assert_eq!(got.attributes.get("ota"), None);
    assert_eq!((got.updated_at, got.reported_at), (last, last));

    // An empty inventory is an inventory.
    let empty = inventory("{}");
    assert!(
        store
            .put_inventory(t.id, d.id, &empty, last.plus_millis(1))
            .await
            .unwrap()
    );
    assert!(
        store
            .device_inventory(t.id, d.id)
            .await
            .unwrap()
            .unwrap()
            .attributes
            .is_empty()
    );
}

pub async fn inventory_is_tenant_scoped(store: &dyn Store) {
    let a = new_tenant(store, "a").await;
    let b = new_tenant(store, "b").await;
    let d = device(a.id, "x", DeviceState::Accepted);
    store.insert_device(&d).await.unwrap();
    let inv = inventory(r#"{"site":"north"}"#);
    assert!(matches!(
        store.put_inventory(b.id, d.id, &inv, T0).await,
        Err(StoreError::NotFound(_))
    ));
    let ghost = DeviceId::from_uuid(Uuid::now_v7());
    assert!(matches!(
        store.put_inventory(a.id, ghost, &inv, T0).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(store.put_inventory(a.id, d.id, &inv, T0).await.unwrap());
    assert_eq!(store.device_inventory(b.id, d.id).await.unwrap(), None);
    assert!(
        store
            .device_inventories(b.id, &[d.id])
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store.device_inventories(a.id, &[d.id]).await.unwrap().len(),
        1
    );
}

pub async fn inventories_of_many_devices(store: &dyn Store) {
    let t = new_tenant(store, "acme").await;
    let mut ids = Vec::new();
    for i in 0..150 {
        let d = device(t.id, &format!("d{i}"), DeviceState::Accepted);
        store.insert_device(&d).await.unwrap();
        // Every third device never reports.
        if i % 3 != 0 {
            let inv = inventory(&format!(r#"{{"n":{i}}}"#));
            store.put_inventory(t.id, d.id, &inv, T0).await.unwrap();
        }
        ids.push(d.id);
    }
    assert!(
        store
            .device_inventories(t.id, &[])
            .await
            .unwrap()
            .is_empty()
    );
    // Duplicates and more than one chunk.
    let mut asked = ids.clone();
    asked.push(ids[1]);
    let found = store.device_inventories(t.id, &asked).await.unwrap();
    assert_eq!(found.len(), 100);
    for (i, id) in ids.iter().enumerate() {
        match found.get(id) {
            Some(inv) => {
                assert_ne!(i % 3, 0);
                assert_eq!(inv.attributes, inventory(&format!(r#"{{"n":{i}}}"#)));
            }
            None => assert_eq!(i % 3, 0),
        }
    }
}

fn tag_key(k: &str) -> tender_core::inventory::AttributeName {
    tender_core::inventory::AttributeName::parse(k).expect("test tag keys are valid")
}

pub async fn tags_set_replace_delete_and_are_bounded(store: &dyn Store) {
    let a = new_tenant(store, "a").await;
    let b = new_tenant(store, "b").await;
    let d = device(a.id, "x", DeviceState::Accepted);
    let e = device(a.id, "y", DeviceState::Accepted);
    store.insert_device(&d).await.unwrap();
    store.insert_device(&e).await.unwrap();
    assert!(store.device_tags(a.id, &[d.id]).await.unwrap().is_empty());
    store
        .set_device_tag(a.id, d.id, &tag_key("site"), "north")
        .await
        .unwrap();
    store
        .set_device_tag(a.id, d.id, &tag_key("owner"), "ops")
        .await
        .unwrap();
    store
        .set_device_tag(a.id, d.id, &tag_key("site"), "south")
        .await
        .unwrap();
    store
        .set_device_tag(a.id, e.id, &tag_key("site"), "east")
        .await
        .unwrap();
    let tags = store.device_tags(a.id, &[d.id, e.id, d.id]).await.unwrap();
    assert_eq!(
        tags[&d.id]
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect::<Vec<_>>(),
        vec![("owner", "ops"), ("site", "south")]
    );
    assert_eq!(tags[&e.id]["site"], "east");
    // Other tenants neither see nor touch them.
    assert!(store.device_tags(b.id, &[d.id]).await.unwrap().is_empty());
    assert!(matches!(
        store
            .set_device_tag(b.id, d.id, &tag_key("site"), "x")
            .await,
        Err(StoreError::NotFound(_))
    ));
    assert!(
        !store
            .delete_device_tag(b.id, d.id, &tag_key("site"))
            .await
            .unwrap()
    );
    assert!(
        store
            .delete_device_tag(a.id, d.id, &tag_key("site"))
            .await
            .unwrap()
    );
    assert!(
        !store
            .delete_device_tag(a.id, d.id, &tag_key("site"))
            .await
            .unwrap()
    );
    assert_eq!(
        store.device_tags(a.id, &[d.id]).await.unwrap()[&d.id].len(),
        1
    );
    // At most MAX_TAGS; replacing one at the limit still works.
    for i in 1..tender_core::inventory::MAX_TAGS {
        store
            .set_device_tag(a.id, d.id, &tag_key(&format!("k{i}")), "v")
            .await
            .unwrap();
    }
    assert!(matches!(
        store
            .set_device_tag(a.id, d.id, &tag_key("one-more"), "v")
            .await,
        Err(StoreError::Conflict(_))
    ));
    store
        .set_device_tag(a.id, d.id, &tag_key("k1"), "w")
        .await
        .unwrap();
    assert_eq!(
        store.device_tags(a.id, &[d.id]).await.unwrap()[&d.id]["k1"],
        "w"
    );
}

fn group(
    tenant: TenantId,
    name: &str,
    parent: Option<tender_core::GroupId>,
    kind: tender_core::group::GroupKind,
) -> tender_core::group::Group {
    tender_core::group::Group {
        id: tender_core::GroupId::from_uuid(Uuid::now_v7()),
        tenant_id: tenant,
        name: tender_core::group::GroupName::parse(name).unwrap(),
        parent_id: parent,
        kind,
        created_at: T0,
        updated_at: T0,
    }
}

pub async fn groups_lifecycle_and_members(store: &dyn Store) {
    use tender_core::group::{GroupKind, GroupName};
    let a = new_tenant(store, "a").await;
    let b = new_tenant(store, "b").await;
    let plant = group(a.id, "plant-1", None, GroupKind::Static);
    let line = group(a.id, "line-3", Some(plant.id), GroupKind::Static);
    let debian = group(
        a.id,
        "debian",
        None,
        GroupKind::Dynamic {
            query: r#"inventory.os.id = "debian""#.into(),
        },
    );
    for g in [&plant, &line, &debian] {
        store.create_group(g).await.unwrap();
    }
    // Names are unique per tenant, not across tenants.
    assert!(matches!(
        store
            .create_group(&group(a.id, "plant-1", None, GroupKind::Static))
            .await,
        Err(StoreError::Conflict(_))
    ));
    store
        .create_group(&group(b.id, "plant-1", None, GroupKind::Static))
        .await
        .unwrap();
    let names: Vec<String> = store
        .groups(a.id)
        .await
        .unwrap()
        .iter()
        .map(|g| g.name.to_string())
        .collect();
    assert_eq!(names, ["debian", "line-3", "plant-1"]);
    assert_eq!(store.group(a.id, line.id).await.unwrap().unwrap(), line);
    assert_eq!(store.group(b.id, line.id).await.unwrap(), None);
    assert_eq!(store.group(a.id, debian.id).await.unwrap().unwrap(), debian);

    // Rename and move keep the id (and so the members).
    let d1 = device(a.id, "d1", DeviceState::Accepted);
    let d2 = device(a.id, "d2", DeviceState::Accepted);
    store.insert_device(&d1).await.unwrap();
    store.insert_device(&d2).await.unwrap();
    assert_eq!(
        store
            .add_group_members(a.id, line.id, &[d1.id, d2.id], T0)
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        store
            .add_group_members(a.id, line.id, &[d1.id], T0)
            .await
            .unwrap(),
        0,
        "adding a member again changes nothing"
    );
    let mut renamed = line.clone();
    renamed.name = GroupName::parse("line 3 north").unwrap();
    renamed.parent_id = None;
    renamed.updated_at = T0.plus_millis(1);
    store.update_group(&renamed).await.unwrap();
    assert_eq!(store.group(a.id, line.id).await.unwrap().unwrap(), renamed);
    assert_eq!(
        store.device_groups(a.id, d1.id).await.unwrap(),
        vec![line.id]
    );
    let mut clash = renamed.clone();
    clash.name = GroupName::parse("plant-1").unwrap();
    assert!(matches!(
        store.update_group(&clash).await,
        Err(StoreError::Conflict(_))
    ));
    let mut foreign = renamed.clone();
    foreign.tenant_id = b.id;
    assert!(matches!(
        store.update_group(&foreign).await,
        Err(StoreError::NotFound(_))
    ));

    // Members: another tenant's device or group is NotFound, and nothing is added.
    let other = device(b.id, "o", DeviceState::Accepted);
    store.insert_device(&other).await.unwrap();
    assert!(matches!(
        store
            .add_group_members(a.id, plant.id, &[d1.id, other.id], T0)
            .await,
        Err(StoreError::NotFound(_))
    ));
    assert!(store.device_groups(a.id, d1.id).await.unwrap() == vec![line.id]);
    assert_eq!(
        store
            .remove_group_members(a.id, line.id, &[d2.id, d2.id])
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        store
            .remove_group_members(b.id, line.id, &[d1.id])
            .await
            .unwrap(),
        0
    );

    // A group with children cannot go; without, it goes with its memberships.
    let mut back = renamed.clone();
    back.parent_id = Some(plant.id);
    store.update_group(&back).await.unwrap();
    assert!(matches!(
        store.delete_group(a.id, plant.id).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(store.delete_group(a.id, line.id).await.unwrap());
    assert!(!store.delete_group(a.id, line.id).await.unwrap());
    assert!(store.device_groups(a.id, d1.id).await.unwrap().is_empty());
    assert!(store.delete_group(a.id, plant.id).await.unwrap());
}

pub async fn device_filters_match_the_same_on_every_backend(store: &dyn Store) {
    use crate::filter::{Column, Cond, Filter, Op, Scope, Test};
    let glob = |p: &str| {
        let g = tender_core::query::GlobPattern::parse(p).unwrap();
        Test::Glob {
            like: g.to_like(),
            glob: g.to_sqlite_glob(),
        }
    };
    let t = new_tenant(store, "acme").await;
    let other = new_tenant(store, "other").await;
    let inv = |json: &str| inventory(json);
    let specs = [
        (
            "kiosk-1",
            r#"{"os.id":"debian","os.version":"12","cpu.count":4,"ips":["10.0.0.1","10.0.0.2"]}"#,
            Some("north"),
        ),
        (
            "kiosk-2",
            r#"{"os.id":"ubuntu","os.version":"22.04","cpu.count":8,"ips":["10.0.1.1"]}"#,
            Some("south"),
        ),
        (
            "Kiosk-3",
            r#"{"os.id":"debian","os.version":"11","cpu.count":2}"#,
            None,
        ),
        ("gw_%1", r#"{"os.id":"poky"}"#, Some("north")),
    ];
    let mut ids = Vec::new();
    for (name, json, site) in specs {
        let d = device(t.id, name, DeviceState::Accepted);
        store.insert_device(&d).await.unwrap();
        store
            .put_inventory(t.id, d.id, &inv(json), T0)
            .await
            .unwrap();
        if let Some(site) = site {
            store
                .set_device_tag(t.id, d.id, &tag_key("site"), site)
                .await
                .unwrap();
        }
        ids.push(d.id);
    }
    // A look-alike in another tenant never matches.
    let o = device(other.id, "kiosk-1", DeviceState::Accepted);
    store.insert_device(&o).await.unwrap();
    store
        .put_inventory(other.id, o.id, &inv(specs[0].1), T0)
        .await
        .unwrap();
    let g = group(t.id, "lab", None, tender_core::group::GroupKind::Static);
    store.create_group(&g).await.unwrap();
    store
        .add_group_members(t.id, g.id, &[ids[1], ids[3]], T0)
        .await
        .unwrap();
    let c = connection(t.id, ids[2], T0);
    store.open_connection(&c).await.unwrap();

    let attr = |name: &str, test: Test| {
        Filter::Cond(Cond::Attr {
            scope: Scope::Inventory,
            name: name.into(),
            test,
        })
    };
    let names = |found: Vec<DeviceId>| -> Vec<usize> {
        found
            .iter()
            .map(|f| ids.iter().position(|i| i == f).unwrap())
            .collect()
    };
    let cases: Vec<(Filter, Vec<usize>)> = vec![
        (
            attr("os.id", Test::Text(Op::Eq, "debian".into())),
            vec![0, 2],
        ),
        (
            attr("os.id", Test::Text(Op::Ne, "debian".into())),
            vec![1, 3],
        ),
        (attr("ips", Test::Text(Op::Eq, "10.0.0.2".into())), vec![0]),
        (attr("os.version", Test::Number(Op::Ge, 12.0)), vec![0, 1]),
        (attr("cpu.count", Test::Number(Op::Lt, 8.0)), vec![0, 2]),
        (
            attr("cpu.count", Test::NumberIn(vec![2.0, 8.0])),
            vec![1, 2],
        ),
        (
            attr("os.id", Test::TextIn(vec!["poky".into(), "ubuntu".into()])),
            vec![1, 3],
        ),
        (attr("os.id", Test::Text(Op::Gt, "poky".into())), vec![1]),
        (attr("ips", glob("10.0.1.*")), vec![1]),
        (
            Filter::Cond(Cond::Column {
                column: Column::Name,
                test: glob("kiosk-?"),
            }),
            vec![0, 1],
        ),
        (
            Filter::Cond(Cond::Column {
                column: Column::Name,
                test: glob("gw_%*"),
            }),
            vec![3],
        ),
        (
            Filter::Cond(Cond::Column {
                column: Column::Name,
                test: glob("gw__*"),
            }),
            vec![],
        ),
        (
            Filter::Not(Box::new(Filter::Cond(Cond::AttrExists {
                scope: Scope::Inventory,
                name: "ips".into(),
            }))),
            vec![2, 3],
        ),
        (
            Filter::Cond(Cond::Attr {
                scope: Scope::Tag,
                name: "site".into(),
                test: Test::Text(Op::Eq, "north".into()),
            }),
            vec![0, 3],
        ),
        (Filter::Cond(Cond::InGroups(vec![g.id])), vec![1, 3]),
        (Filter::Cond(Cond::Online), vec![2]),
        (
            Filter::Or(vec![
                Filter::Cond(Cond::Online),
                Filter::And(vec![
                    attr("os.id", Test::Text(Op::Eq, "debian".into())),
                    Filter::Cond(Cond::Ids(vec![ids[0]])),
                ]),
            ]),
            vec![0, 2],
        ),
        (Filter::Cond(Cond::LastSeen(Op::Gt, T0)), vec![]),
        (Filter::Cond(Cond::CreatedAt(Op::Le, T0)), vec![0, 1, 2, 3]),
        (Filter::True, vec![0, 1, 2, 3]),
        (Filter::False, vec![]),
    ];
    for (f, want) in cases {
        let filter = DeviceFilter {
            matching: Some(f.clone()),
            ..Default::default()
        };
        let page = store
            .list_devices(
                t.id,
                &filter,
                &PageRequest {
                    after: None,
                    limit: limit(100),
                },
            )
            .await
            .unwrap();
        assert_eq!(
            names(page.items.iter().map(|d| d.id).collect()),
            want,
            "{f:?}"
        );
        assert_eq!(
            store.count_devices(t.id, &filter).await.unwrap(),
            want.len() as u64,
            "{f:?}"
        );
    }
    // Pages of a filtered listing, with a state filter too.
    let filter = DeviceFilter {
        state: Some(DeviceState::Accepted),
        matching: Some(Filter::True),
    };
    let first = store
        .list_devices(
            t.id,
            &filter,
            &PageRequest {
                after: None,
                limit: limit(3),
            },
        )
        .await
        .unwrap();
    assert_eq!(first.items.len(), 3);
    let rest = store
        .list_devices(
            t.id,
            &filter,
            &PageRequest {
                after: first.next,
                limit: limit(3),
            },
        )
        .await
        .unwrap();
    assert_eq!(names(rest.items.iter().map(|d| d.id).collect()), vec![3]);
    assert_eq!(rest.next, None);
    // An inventory that changes moves the device in and out of a match.
    store
        .put_inventory(
            t.id,
            ids[3],
            &inv(r#"{"os.id":"debian"}"#),
            T0.plus_millis(1),
        )
        .await
        .unwrap();
    let debian = DeviceFilter {
        matching: Some(attr("os.id", Test::Text(Op::Eq, "debian".into()))),
        ..Default::default()
    };
    assert_eq!(store.count_devices(t.id, &debian).await.unwrap(), 3);
    // Paging an equality filter (the plan that walks the attribute index): each device once,
    // in id order, across pages, with a list value that holds the match twice, a state filter
    // and further conditions.
    store
        .put_inventory(
            t.id,
            ids[0],
            &inv(r#"{"os.id":"debian","ips":["10.9.9.9","10.9.9.9","x"]}"#),
            T0.plus_millis(2),
        )
        .await
        .unwrap();
    store
        .put_inventory(
            t.id,
            ids[1],
            &inv(r#"{"os.id":"ubuntu","ips":["10.9.9.9"]}"#),
            T0.plus_millis(2),
        )
        .await
        .unwrap();
    let ip = attr("ips", Test::Text(Op::Eq, "10.9.9.9".into()));
    for (matching, want) in [
        (ip.clone(), vec![0, 1]),
        (
            Filter::And(vec![
                ip.clone(),
                attr("os.id", Test::Text(Op::Eq, "ubuntu".into())),
            ]),
            vec![1],
        ),
        (
            Filter::And(vec![
                Filter::Not(Box::new(attr("os.id", Test::Text(Op::Eq, "ubuntu".into())))),
                ip.clone(),
            ]),
            vec![0],
        ),
        (
            Filter::And(vec![
                debian.matching.clone().unwrap(),
                Filter::Cond(Cond::Column {
                    column: Column::Name,
                    test: glob("*iosk-*"),
                }),
            ]),
            vec![0, 2],
        ),
        // No equality to walk: the plan that checks a window of devices in id order.
        (
            Filter::Not(Box::new(attr("os.id", Test::Text(Op::Eq, "ubuntu".into())))),
            vec![0, 2, 3],
        ),
        (attr("cpu.count", Test::Number(Op::Ge, 2.0)), vec![2]),
        (
            Filter::Or(vec![
                attr("os.id", Test::Text(Op::Eq, "ubuntu".into())),
                Filter::Cond(Cond::Column {
                    column: Column::Name,
                    test: glob("gw*"),
                }),
            ]),
            vec![1, 3],
        ),
    ] {
        let mut got = Vec::new();
        let mut after = None;
        for _ in 0..10 {
            let page = store
                .list_devices(
                    t.id,
                    &DeviceFilter {
                        state: Some(DeviceState::Accepted),
                        matching: Some(matching.clone()),
                    },
                    &PageRequest {
                        after,
                        limit: limit(1),
                    },
                )
                .await
                .unwrap();
            got.extend(page.items.iter().map(|d| d.id));
            after = page.next;
            if after.is_none() {
                break;
            }
        }
        let mut sorted = got.clone();
        sorted.sort();
        assert_eq!(got, sorted, "in id order: {matching:?}");
        assert_eq!(names(got), want, "{matching:?}");
        let n = store
            .count_devices(
                t.id,
                &DeviceFilter {
                    state: None,
                    matching: Some(matching.clone()),
                },
            )
            .await
            .unwrap();
        assert_eq!(n as usize, want.len(), "{matching:?}");
    }
    let none = store
        .list_devices(
            t.id,
            &DeviceFilter {
                state: Some(DeviceState::Pending),
                matching: Some(ip.clone()),
            },
            &PageRequest {
                after: None,
                limit: limit(10),
            },
        )
        .await
        .unwrap();
    assert!(none.items.is_empty());
    // Counts over list values whose first match is not the first element, with several
    // matching elements: each device counts once, in a lone test, its negation and an `and`
    // (the count plans that read the attribute index alone).
    store
        .put_inventory(
            t.id,
            ids[2],
            &inv(
                r#"{"os.id":"debian","ips":["x","10.9.9.9","10.9.9.9"],"ports":["22","80","443","8080"]}"#,
            ),
            T0.plus_millis(3),
        )
        .await
        .unwrap();
    let ports = |test: Test| attr("ports", test);
    for (matching, want) in [
        (ip.clone(), vec![0, 1, 2]),
        (Filter::Not(Box::new(ip.clone())), vec![3]),
        (ports(Test::Number(Op::Ge, 80.0)), vec![2]),
        (ports(Test::Number(Op::Gt, 8080.0)), vec![]),
        (
            Filter::Not(Box::new(ports(Test::Number(Op::Ge, 80.0)))),
            vec![0, 1, 3],
        ),
        (ports(Test::Text(Op::Ne, "22".into())), vec![2]),
        (
            ports(Test::TextIn(vec!["443".into(), "8080".into()])),
            vec![2],
        ),
        (
            Filter::Cond(Cond::AttrExists {
                scope: Scope::Inventory,
                name: "ips".into(),
            }),
            vec![0, 1, 2],
        ),
        (
            Filter::And(vec![ip.clone(), ports(Test::Number(Op::Ge, 80.0))]),
            vec![2],
        ),
        (
            Filter::And(vec![
                ip.clone(),
                attr("os.id", Test::Text(Op::Eq, "debian".into())),
            ]),
            vec![0, 2],
        ),
    ] {
        let page = store
            .list_devices(
                t.id,
                &DeviceFilter {
                    state: Some(DeviceState::Accepted),
                    matching: Some(matching.clone()),
                },
                &PageRequest {
                    after: None,
                    limit: limit(10),
                },
            )
            .await
            .unwrap();
        assert_eq!(
            names(page.items.iter().map(|d| d.id).collect()),
            want,
            "{matching:?}"
        );
        let n = store
            .count_devices(
                t.id,
                &DeviceFilter {
                    state: None,
                    matching: Some(matching.clone()),
                },
            )
            .await
            .unwrap();
        assert_eq!(n as usize, want.len(), "{matching:?}");
    }
}

fn doc(v: serde_json::Value) -> tender_core::twin::Document {
    match v {
        serde_json::Value::Object(m) => m,
        other => panic!("not an object: {other}"),
    }
}

pub async fn twin_documents_are_compare_and_set(store: &dyn Store) {
    use serde_json::json;
    let a = new_tenant(store, "a").await;
    let b = new_tenant(store, "b").await;
    let d = device(a.id, "d1", DeviceState::Accepted);
    store.insert_device(&d).await.unwrap();
    // Nothing written: empty documents at version 0.
    let t = store.twin(a.id, d.id).await.unwrap();
    assert_eq!(t, tender_core::twin::Twin::default());

    let want = doc(json!({"log": {"level": "debug"}, "n": 1.5}));
    let t1 = T0.plus_millis(1);
    assert_eq!(
        store.write_desired(a.id, d.id, 0, &want, t1).await.unwrap(),
        Some(1)
    );
    // A writer that read version 0 loses against the one that wrote version 1.
    let other = doc(json!({"log": {"level": "info"}}));
    assert_eq!(
        store
            .write_desired(a.id, d.id, 0, &other, t1)
            .await
            .unwrap(),
        None
    );
    // Two writers racing from version 1: exactly one wins.
    let writes = futures_join_all((0..4).map(|i| {
        let doc = doc(json!({ "writer": i }));
        async move { store.write_desired(a.id, d.id, 1, &doc, t1).await.unwrap() }
    }))
    .await;
    assert_eq!(
        writes.iter().filter(|w| **w == Some(2)).count(),
        1,
        "{writes:?}"
    );
    assert_eq!(writes.iter().filter(|w| w.is_none()).count(), 3);
    let t = store.twin(a.id, d.id).await.unwrap();
    assert_eq!(t.desired_version, 2);
    assert_eq!(t.desired_at, Some(t1));
    assert!(t.desired.contains_key("writer"));
    assert_eq!(t.reported_version, 0);

    let rep = doc(json!({"fw": "1.2", "nested": {"x": [1, 2]}}));
    assert_eq!(
        store.write_reported(a.id, d.id, 0, &rep, t1).await.unwrap(),
        Some(1)
    );
    assert_eq!(
        store.write_reported(a.id, d.id, 0, &rep, t1).await.unwrap(),
        None
    );
    let t = store.twin(a.id, d.id).await.unwrap();
    assert_eq!(t.reported, rep);
    assert_eq!(t.reported_version, 1);

    // The rendered version grows only when the document changes.
    let r1 = doc(json!({"a": 1}));
    assert_eq!(store.record_rendered(a.id, d.id, &r1, t1).await.unwrap(), 1);
    assert_eq!(store.record_rendered(a.id, d.id, &r1, t1).await.unwrap(), 1);
    assert_eq!(
        store
            .record_rendered(a.id, d.id, &doc(json!({"a": 2})), t1)
            .await
            .unwrap(),
        2
    );
    assert_eq!(store.twin(a.id, d.id).await.unwrap().rendered_version, 2);

    // Another tenant sees nothing and cannot write.
    assert_eq!(
        store.twin(b.id, d.id).await.unwrap(),
        tender_core::twin::Twin::default()
    );
    assert!(matches!(
        store.write_desired(b.id, d.id, 0, &want, t1).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store
            .write_reported(a.id, DeviceId::from_uuid(Uuid::now_v7()), 0, &want, t1)
            .await,
        Err(StoreError::NotFound(_))
    ));
}

pub async fn reported_state_is_searchable_by_type(store: &dyn Store) {
    use crate::filter::{Cond, Filter, Op, Scope, Test};
    use serde_json::json;
    let a = new_tenant(store, "a").await;
    let d1 = device(a.id, "d1", DeviceState::Accepted);
    let d2 = device(a.id, "d2", DeviceState::Accepted);
    store.insert_device(&d1).await.unwrap();
    store.insert_device(&d2).await.unwrap();
    store
        .write_reported(
            a.id,
            d1.id,
            0,
            &doc(json!({"fw": {"channel": "beta", "build": 12}})),
            T0,
        )
        .await
        .unwrap();
    store
        .write_reported(
            a.id,
            d2.id,
            0,
            &doc(json!({"fw": {"channel": "12", "build": "x"}})),
            T0,
        )
        .await
        .unwrap();
    let count = |f: Filter| async move {
        store
            .count_devices(
                a.id,
                &DeviceFilter {
                    state: None,
                    matching: Some(f),
                },
            )
            .await
            .unwrap()
    };
    let attr = |scope, name: &str, test| {
        Filter::Cond(Cond::Attr {
            scope,
            name: name.into(),
            test,
        })
    };
    assert_eq!(
        count(attr(
            Scope::ReportedString,
            "/fw/channel",
            Test::Text(Op::Eq, "beta".into())
        ))
        .await,
        1
    );
    assert_eq!(
        count(attr(
            Scope::ReportedNumber,
            "/fw/build",
            Test::Number(Op::Gt, 10.0)
        ))
        .await,
        1
    );
    // A string that looks like a number is not a number.
    assert_eq!(
        count(attr(
            Scope::ReportedNumber,
            "/fw/channel",
            Test::Number(Op::Eq, 12.0)
        ))
        .await,
        0
    );
    assert_eq!(
        count(Filter::Cond(Cond::AttrExists {
            scope: Scope::ReportedOther,
            name: "/fw".into()
        }))
        .await,
        2
    );
    // A new report replaces the index.
    store
        .write_reported(a.id, d1.id, 1, &doc(json!({"fw": null})), T0)
        .await
        .unwrap();
    assert_eq!(
        count(attr(
            Scope::ReportedString,
            "/fw/channel",
            Test::Text(Op::Eq, "beta".into())
        ))
        .await,
        0
    );
}

pub async fn config_layers_are_compare_and_set(store: &dyn Store) {
    use serde_json::json;
    use tender_core::group::GroupKind;
    let a = new_tenant(store, "a").await;
    let b = new_tenant(store, "b").await;
    let g = group(a.id, "site", None, GroupKind::Static);
    store.create_group(&g).await.unwrap();
    assert!(store.config_layers(a.id).await.unwrap().is_empty());
    let fleet = doc(json!({"tz": "UTC"}));
    assert_eq!(
        store
            .write_config_layer(a.id, None, 0, 0, &fleet, T0)
            .await
            .unwrap(),
        Some(1)
    );
    // Creating again is a conflict, not an overwrite.
    assert_eq!(
        store
            .write_config_layer(a.id, None, 0, 0, &fleet, T0)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .write_config_layer(a.id, None, 1, 0, &doc(json!({"tz": "CET"})), T0)
            .await
            .unwrap(),
        Some(2)
    );
    assert_eq!(
        store
            .write_config_layer(a.id, None, 1, 0, &fleet, T0)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .write_config_layer(a.id, Some(g.id), 0, 7, &fleet, T0)
            .await
            .unwrap(),
        Some(1)
    );
    let layers = store.config_layers(a.id).await.unwrap();
    assert_eq!(layers.len(), 2);
    let site = layers.iter().find(|l| l.group_id == Some(g.id)).unwrap();
    assert_eq!((site.priority, site.version), (7, 1));
    let f = layers.iter().find(|l| l.group_id.is_none()).unwrap();
    assert_eq!(f.document, doc(json!({"tz": "CET"})));
    // Tenant-scoped, and a group's layer needs the group.
    assert!(store.config_layers(b.id).await.unwrap().is_empty());
    assert!(matches!(
        store
            .write_config_layer(b.id, Some(g.id), 0, 0, &fleet, T0)
            .await,
        Err(StoreError::NotFound(_))
    ));
    // Deleting the group deletes its layer.
    assert!(store.delete_group(a.id, g.id).await.unwrap());
    assert_eq!(store.config_layers(a.id).await.unwrap().len(), 1);
    assert!(store.delete_config_layer(a.id, None).await.unwrap());
    assert!(!store.delete_config_layer(a.id, None).await.unwrap());
}

pub async fn events_append_in_order_and_filter(store: &dyn Store) {
    use tender_core::event::{EventFilter, EventKind, NewEvent};
    use tender_core::group::GroupKind;
    let a = new_tenant(store, "a").await;
    let b = new_tenant(store, "b").await;
    let d1 = device(a.id, "d1", DeviceState::Accepted);
    let d2 = device(a.id, "d2", DeviceState::Accepted);
    store.insert_device(&d1).await.unwrap();
    store.insert_device(&d2).await.unwrap();
    let g = group(
        a.id,
        "dyn",
        None,
        GroupKind::Dynamic {
            query: "online = true".into(),
        },
    );
    store.create_group(&g).await.unwrap();
    let mut ids = Vec::new();
    for (i, (dev, kind)) in [
        (d1.id, EventKind::DeviceConnected),
        (d2.id, EventKind::InventoryChanged),
        (d1.id, EventKind::DeviceDisconnected),
        (d1.id, EventKind::GroupJoined),
    ]
    .into_iter()
    .enumerate()
    {
        let mut e = NewEvent::device(a.id, dev, T0.plus_millis(i as i64), kind).with("n", i as u64);
        if kind == EventKind::GroupJoined {
            e = e.in_group(g.id);
        }
        ids.push(store.append_event(&e).await.unwrap());
    }
    store
        .append_event(&NewEvent::device(b.id, d1.id, T0, EventKind::DeviceCreated))
        .await
        .unwrap();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    let all = store
        .events(a.id, &EventFilter::default(), 100)
        .await
        .unwrap();
    assert_eq!(all.len(), 4, "other tenants' events are not listed");
    assert_eq!(all[1].kind, EventKind::InventoryChanged);
    assert_eq!(all[1].data["n"], 1);
    assert_eq!(all[3].group_id, Some(g.id));
    let after = store
        .events(
            a.id,
            &EventFilter {
                after: Some(ids[1]),
                ..Default::default()
            },
            100,
        )
        .await
        .unwrap();
    assert_eq!(after.iter().map(|e| e.id).collect::<Vec<_>>(), ids[2..]);
    let f = EventFilter {
        device: Some(d1.id),
        kinds: vec![EventKind::DeviceConnected, EventKind::DeviceDisconnected],
        ..Default::default()
    };
    let got = store.events(a.id, &f, 100).await.unwrap();
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|e| f.matches(e)));
    assert_eq!(
        store
            .events(a.id, &EventFilter::default(), 1)
            .await
            .unwrap()
            .len(),
        1
    );
    let by_group = EventFilter {
        group: Some(g.id),
        ..Default::default()
    };
    assert_eq!(store.events(a.id, &by_group, 10).await.unwrap().len(), 1);
    // Pruning by age.
    assert_eq!(store.prune_events(T0.plus_millis(2)).await.unwrap(), 3);
    assert_eq!(
        store
            .events(a.id, &EventFilter::default(), 100)
            .await
            .unwrap()
            .len(),
        2
    );

    // Dynamic memberships: recorded once, removed once.
    assert!(
        store
            .set_dynamic_membership(a.id, g.id, d1.id, true, T0)
            .await
            .unwrap()
    );
    assert!(
        !store
            .set_dynamic_membership(a.id, g.id, d1.id, true, T0)
            .await
            .unwrap()
    );
    assert_eq!(
        store.dynamic_memberships(a.id, d1.id).await.unwrap(),
        vec![g.id]
    );
    assert!(
        store
            .dynamic_memberships(b.id, d1.id)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .set_dynamic_membership(a.id, g.id, d1.id, false, T0)
            .await
            .unwrap()
    );
    assert!(
        !store
            .set_dynamic_membership(a.id, g.id, d1.id, false, T0)
            .await
            .unwrap()
    );
    store
        .set_dynamic_membership(a.id, g.id, d2.id, true, T0)
        .await
        .unwrap();
    assert!(store.delete_group(a.id, g.id).await.unwrap());
    assert!(
        store
            .dynamic_memberships(a.id, d2.id)
            .await
            .unwrap()
            .is_empty()
    );
}

pub async fn device_metadata_round_trips(store: &dyn Store) {
    let a = new_tenant(store, "a").await;
    let b = new_tenant(store, "b").await;
    let d = device(a.id, "d1", DeviceState::Accepted);
    store.insert_device(&d).await.unwrap();
    let empty = store.device_metadata(a.id, d.id).await.unwrap();
    assert_eq!(empty, tender_core::device::DeviceMetadata::default());
    store
        .set_device_metadata(a.id, d.id, Some("ops"), Some("rack 3\nshelf 2"), T0)
        .await
        .unwrap();
    let m = store.device_metadata(a.id, d.id).await.unwrap();
    assert_eq!(m.owner.as_deref(), Some("ops"));
    assert_eq!(m.notes.as_deref(), Some("rack 3\nshelf 2"));
    assert_eq!(m.updated_at, Some(T0));
    store
        .set_device_metadata(a.id, d.id, None, Some("moved"), T0.plus_millis(1))
        .await
        .unwrap();
    let m = store.device_metadata(a.id, d.id).await.unwrap();
    assert_eq!((m.owner, m.notes.as_deref()), (None, Some("moved")));
    // Tenant-scoped: another tenant neither sees nor writes it.
    assert_eq!(
        store.device_metadata(b.id, d.id).await.unwrap(),
        tender_core::device::DeviceMetadata::default()
    );
    assert!(matches!(
        store
            .set_device_metadata(b.id, d.id, Some("x"), None, T0)
            .await,
        Err(StoreError::NotFound(_))
    ));
}

pub async fn data_survives_reopen(f: &Fixture) {
    let t = new_tenant(&*f.store, "acme").await;
    let d = device(t.id, "x", DeviceState::Accepted);
    f.store.insert_device(&d).await.unwrap();
    // Opening again runs the migrations again (a no-op) and sees the same data.
    let again = crate::open(&f.options).await.expect("reopen");
    assert_eq!(again.device(t.id, d.id).await.unwrap(), Some(d));
    assert_eq!(again.tenant_by_slug(&t.slug).await.unwrap(), Some(t));
}

/// Runs futures concurrently on the current task and collects their outputs in order.
async fn futures_join_all<F: std::future::Future>(futs: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut pending: Vec<_> = futs.map(|f| Some(Box::pin(f))).collect();
    let mut results: Vec<Option<F::Output>> = pending.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut all_done = true;
        for (slot, result) in pending.iter_mut().zip(results.iter_mut()) {
            if let Some(fut) = slot {
                match fut.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => {
                        *result = Some(v);
                        *slot = None;
                    }
                    std::task::Poll::Pending => all_done = false,
                }
            }
        }
        if all_done {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    results.into_iter().flatten().collect()
}

/// A PostgreSQL database created for one test and dropped (even if the test panics) when this
/// guard drops. The server is taken from `TENDER_TEST_POSTGRES_URL` (default
/// `postgres://postgres@127.0.0.1:5432/postgres`).
pub struct PgTestDatabase {
    admin_url: String,
    name: String,
    /// URL of the new database.
    pub url: String,
}

impl PgTestDatabase {
    pub async fn create() -> Self {
        let admin_url = std::env::var("TENDER_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let name = format!("tender_test_{}", Uuid::new_v4().simple());
        let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(&admin_url)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "PostgreSQL tests need a server at {admin_url} (set TENDER_TEST_POSTGRES_URL): {e}"
                )
            });
        // The name is generated above from a UUID: safe to splice.
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .expect("create test database");
        let mut url = url::Url::parse(&admin_url).expect("TENDER_TEST_POSTGRES_URL is a URL");
        url.set_path(&name);
        PgTestDatabase {
            admin_url,
            name,
            url: url.to_string(),
        }
    }
}

impl PgTestDatabase {
    /// [`create`](Self::create) for tests without an async runtime.
    pub fn create_blocking() -> Self {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(Self::create())
    }
}

impl Drop for PgTestDatabase {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        // Drop may run inside a runtime: do the async cleanup on a thread of its own.
        let cleanup = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let conn = <sqlx::PgConnection as sqlx::Connection>::connect(&admin_url).await;
                if let Ok(mut admin) = conn {
                    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .execute(&mut admin)
                    .await;
                }
            });
        });
        let _ = cleanup.join();
    }
}

/// Options for a test store at `url` with small pools.
pub fn test_options(url: String) -> OpenOptions {
    OpenOptions {
        url,
        max_connections: 8,
        connect_timeout: std::time::Duration::from_secs(10),
    }
}

/// A fixture on a fresh PostgreSQL database.
pub async fn postgres_fixture() -> Fixture {
    let db = PgTestDatabase::create().await;
    let options = test_options(db.url.clone());
    let store = crate::open(&options).await.expect("open PostgreSQL store");
    Fixture {
        store,
        options,
        guard: Box::new(db),
    }
}

/// A fixture on a fresh SQLite file in a temporary directory.
pub async fn sqlite_fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("temp dir");
    let options = test_options(format!(
        "sqlite://{}",
        dir.path().join("tender.db").display()
    ));
    let store = crate::open(&options).await.expect("open SQLite store");
    Fixture {
        store,
        options,
        guard: Box::new(dir),
    }
}

pub async fn sample_batches_of_many_devices_are_all_or_nothing(store: &dyn Store) {
    use crate::DeviceSamples;
    let t = new_tenant(store, "acme").await;
    let other = new_tenant(store, "other").await;
    let mut devices = Vec::new();
    for i in 0..30 {
        let d = device(t.id, &format!("d{i}"), DeviceState::Accepted);
        store.insert_device(&d).await.unwrap();
        devices.push(d);
    }
    let o = device(other.id, "o", DeviceState::Accepted);
    store.insert_device(&o).await.unwrap();
    // 30 devices x 7 samples: more rows than one statement of either backend's chunk holds,
    // with a repeated key across two entries of one device (the later one wins).
    let mut batches: Vec<DeviceSamples> = devices
        .iter()
        .enumerate()
        .map(|(i, d)| DeviceSamples {
            tenant: t.id,
            device: d.id,
            samples: (0..7)
                .map(|k| sample("temp", T0.plus_millis(k), i as f64 + k as f64 / 10.0))
                .collect(),
        })
        .collect();
    batches.push(DeviceSamples {
        tenant: t.id,
        device: devices[0].id,
        samples: vec![sample("temp", T0, -1.0), sample("load", T0, 0.5)],
    });
    batches.push(DeviceSamples {
        tenant: other.id,
        device: o.id,
        samples: vec![sample("temp", T0, 7.0)],
    });
    assert_eq!(store.insert_sample_batches(&batches).await.unwrap(), 212);
    let first = samples_of(store, t.id, devices[0].id, "temp").await;
    assert_eq!(first.len(), 7);
    assert_eq!(first[0], sample("temp", T0, -1.0));
    assert_eq!(
        samples_of(store, t.id, devices[0].id, "load").await,
        vec![sample("load", T0, 0.5)]
    );
    let last = samples_of(store, t.id, devices[29].id, "temp").await;
    assert_eq!(last.len(), 7);
    assert_eq!(last[6], sample("temp", T0.plus_millis(6), 29.6));
    assert_eq!(
        samples_of(store, other.id, o.id, "temp").await,
        vec![sample("temp", T0, 7.0)]
    );
    // The same batch again: stored once.
    assert_eq!(store.insert_sample_batches(&batches).await.unwrap(), 212);
    assert_eq!(
        samples_of(store, t.id, devices[1].id, "temp").await.len(),
        7
    );
    // One entry whose device is not in its tenant fails the whole batch: nothing written.
    let bad = vec![
        DeviceSamples {
            tenant: t.id,
            device: devices[2].id,
            samples: vec![sample("fresh", T0, 1.0)],
        },
        DeviceSamples {
            tenant: t.id,
            device: o.id,
            samples: vec![sample("fresh", T0, 2.0)],
        },
    ];
    let e = store.insert_sample_batches(&bad).await.unwrap_err();
    assert!(matches!(e, StoreError::NotFound(_)), "{e:?}");
    assert!(
        samples_of(store, t.id, devices[2].id, "fresh")
            .await
            .is_empty()
    );
    // A value that is not finite is refused before anything is written.
    let nan = vec![DeviceSamples {
        tenant: t.id,
        device: devices[3].id,
        samples: vec![
            sample("fresh", T0, 1.0),
            sample("fresh", T0.plus_millis(1), f64::NAN),
        ],
    }];
    assert!(store.insert_sample_batches(&nan).await.is_err());
    assert!(
        samples_of(store, t.id, devices[3].id, "fresh")
            .await
            .is_empty()
    );
    assert_eq!(store.insert_sample_batches(&[]).await.unwrap(), 0);
}

pub async fn sample_series_aggregate_buckets_over_devices(store: &dyn Store) {
    use crate::DeviceSamples;
    let t = new_tenant(store, "acme").await;
    let other = new_tenant(store, "other").await;
    let mut devices = Vec::new();
    // More devices than one statement reads, so that buckets are merged across chunks.
    for i in 0..120 {
        let d = device(t.id, &format!("d{i}"), DeviceState::Accepted);
        store.insert_device(&d).await.unwrap();
        devices.push(d.id);
    }
    let o = device(other.id, "o", DeviceState::Accepted);
    store.insert_device(&o).await.unwrap();
    let mut batches: Vec<DeviceSamples> = devices
        .iter()
        .enumerate()
        .map(|(i, d)| DeviceSamples {
            tenant: t.id,
            device: *d,
            // Bucket 0 (T0..T0+10s): i at T0+i ms; bucket 2: 100+i at T0+25s.
            samples: vec![
                sample("temp", T0.plus_millis(i as i64), i as f64),
                sample("temp", T0.plus_millis(25_000), 100.0 + i as f64),
                sample("load", T0, 1.0),
            ],
        })
        .collect();
    batches.push(DeviceSamples {
        tenant: other.id,
        device: o.id,
        samples: vec![sample("temp", T0, 1e9)],
    });
    store.insert_sample_batches(&batches).await.unwrap();
    let temp = metric("temp");
    let mut with_foreign = devices.clone();
    with_foreign.push(o.id);
    let series = store
        .sample_series(
            t.id,
            &with_foreign,
            &temp,
            T0,
            T0.plus_millis(30_000),
            10_000,
        )
        .await
        .unwrap();
    assert_eq!(series.len(), 2, "{series:?}");
    let first = series[0];
    assert_eq!(first.start, T0);
    assert_eq!(first.count, 120);
    assert_eq!((first.min, first.max), (0.0, 119.0));
    assert_eq!(first.sum, (0..120).sum::<i64>() as f64);
    assert_eq!((first.last_at, first.last), (T0.plus_millis(119), 119.0));
    let third = series[1];
    assert_eq!(third.start, T0.plus_millis(20_000));
    assert_eq!(third.count, 120);
    // All at the same time: the greatest value is `last`.
    assert_eq!((third.last_at, third.last), (T0.plus_millis(25_000), 219.0));
    // One device, a range that cuts the samples: `to` is exclusive.
    let one = store
        .sample_series(
            t.id,
            &devices[5..6],
            &temp,
            T0,
            T0.plus_millis(25_000),
            1_000,
        )
        .await
        .unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!((one[0].start, one[0].count, one[0].sum), (T0, 1, 5.0));
    // A bucket grid that starts elsewhere: buckets start at `from`.
    let shifted = store
        .sample_series(
            t.id,
            &devices[..1],
            &temp,
            T0.plus_millis(-5_000),
            T0.plus_millis(30_000),
            10_000,
        )
        .await
        .unwrap();
    let starts: Vec<Timestamp> = shifted.iter().map(|b| b.start).collect();
    assert_eq!(starts, vec![T0.plus_millis(-5_000), T0.plus_millis(25_000)]);
    // No devices, or another tenant's: nothing.
    assert!(
        store
            .sample_series(t.id, &[], &temp, T0, T0.plus_millis(30_000), 10_000)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .sample_series(t.id, &[o.id], &temp, T0, T0.plus_millis(30_000), 10_000)
            .await
            .unwrap()
            .is_empty()
    );
}

pub async fn retention_prunes_old_samples_device_by_device(store: &dyn Store) {
    use crate::DeviceSamples;
    let a = new_tenant(store, "acme").await;
    let b = new_tenant(store, "other").await;
    let mut all = Vec::new();
    for (t, name) in [(a.id, "a1"), (a.id, "a2"), (b.id, "b1")] {
        let d = device(t, name, DeviceState::Accepted);
        store.insert_device(&d).await.unwrap();
        all.push((t, d.id));
    }
    // Without samples: visited all the same.
    let quiet = device(a.id, "quiet", DeviceState::Accepted);
    store.insert_device(&quiet).await.unwrap();
    let batches: Vec<DeviceSamples> = all
        .iter()
        .map(|(t, d)| DeviceSamples {
            tenant: *t,
            device: *d,
            samples: ["a", "b", "c/x"]
                .iter()
                .flat_map(|m| (0..5).map(move |i| sample(m, T0.plus_millis(i * 1000), i as f64)))
                .collect(),
        })
        .collect();
    store.insert_sample_batches(&batches).await.unwrap();
    // Everything before T0 + 2 s goes: 2 of 5 per metric, 3 metrics, 3 devices.
    let cut = T0.plus_millis(2000);
    let mut after = None;
    let mut deleted = 0;
    let mut passes = 0;
    loop {
        let p = store.prune_samples(cut, after, 1).await.unwrap();
        deleted += p.deleted;
        passes += 1;
        match p.next {
            Some(n) => after = Some(n),
            None => break,
        }
        assert!(passes < 10, "the pass ends");
    }
    assert_eq!(deleted, 18);
    assert!(passes >= 4, "one device per call: {passes}");
    for (t, d) in &all {
        for m in ["a", "b", "c/x"] {
            let left = samples_of(store, *t, *d, m).await;
            let times: Vec<Timestamp> = left.iter().map(|s| s.at).collect();
            assert_eq!(
                times,
                vec![cut, T0.plus_millis(3000), T0.plus_millis(4000)],
                "{m}"
            );
        }
    }
    // Again: nothing more to delete, in one call when it covers every device.
    let p = store.prune_samples(cut, None, 100).await.unwrap();
    assert_eq!(
        p,
        crate::PruneProgress {
            deleted: 0,
            next: None
        }
    );
}
