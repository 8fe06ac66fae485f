//! Conformance cases for [`DeploymentStore`](crate::DeploymentStore).

use std::collections::BTreeMap;

use tender_core::artifact::Artifact;
use tender_core::deployment::{
    Amount, Deployment, DeploymentState, Options, Phase, Report, Target, TargetState,
};
use tender_core::device::DeviceState;
use tender_core::page::PageRequest;
use tender_core::{ArtifactId, DeploymentId, DeviceId, TenantId, Timestamp};
use uuid::Uuid;

use super::{T0, device, limit, new_tenant};
use crate::{Store, StoreError};

fn at(s: i64) -> Timestamp {
    T0.plus_millis(s * 1000)
}

async fn artifact(store: &dyn Store, tenant: TenantId) -> ArtifactId {
    let a = Artifact {
        id: ArtifactId::from_uuid(Uuid::now_v7()),
        tenant_id: tenant,
        name: "app".into(),
        version: Uuid::now_v7().to_string(),
        payload_type: "file".into(),
        compatible: vec!["gw".into()],
        depends: BTreeMap::new(),
        provides: BTreeMap::new(),
        size: 10,
        sha256: "00".repeat(32),
        payload_bytes: 5,
        signed_by: vec![],
        manifest: "{}".into(),
        created_at: T0,
        created_by: None,
    };
    store.insert_artifact(&a).await.unwrap();
    a.id
}

async fn devices(store: &dyn Store, tenant: TenantId, n: usize) -> Vec<DeviceId> {
    let mut ids = Vec::new();
    for i in 0..n {
        let d = device(tenant, &format!("dep{i}"), DeviceState::Accepted);
        store.insert_device(&d).await.unwrap();
        ids.push(d.id);
    }
    ids.sort();
    ids
}

fn deployment(tenant: TenantId, artifact: ArtifactId) -> Deployment {
    let mut p1 = Phase::new(Amount::Count(2));
    p1.failure_threshold = Some(Amount::Percent(50));
    Deployment {
        id: DeploymentId::from_uuid(Uuid::now_v7()),
        tenant_id: tenant,
        name: "rollout é".into(),
        artifact_id: artifact,
        target: "group \"all\"".into(),
        query: Some("online = true".into()),
        phases: vec![p1, Phase::new(Amount::Percent(100))],
        options: Options {
            rate_per_minute: Some(100),
            ..Options::default()
        },
        state: DeploymentState::Scheduled,
        status_reason: None,
        current_phase: 0,
        approved_phases: vec![],
        accepted_failures: vec![],
        created_by: Some("alice".into()),
        created_at: T0,
        start_at: Some(at(10)),
        started_at: None,
        finished_at: None,
        updated_at: T0,
        revision: 0,
    }
}

fn targets(d: &Deployment, devs: &[DeviceId]) -> Vec<Target> {
    devs.iter()
        .enumerate()
        .map(|(i, dev)| Target::new(d.tenant_id, d.id, *dev, u32::from(i >= 2), T0))
        .collect()
}

pub async fn deployments_round_trip_and_change_by_revision(store: &dyn Store) {
    let t = new_tenant(store, "dep-a").await;
    let other = new_tenant(store, "dep-b").await;
    let a = artifact(store, t.id).await;
    let devs = devices(store, t.id, 5).await;
    let d = deployment(t.id, a);
    store
        .create_deployment(&d, &targets(&d, &devs))
        .await
        .unwrap();
    assert_eq!(store.deployment(t.id, d.id).await.unwrap(), Some(d.clone()));
    assert_eq!(store.deployment(other.id, d.id).await.unwrap(), None);
    assert_eq!(store.active_deployments().await.unwrap(), vec![d.clone()]);

    // Compare-and-set on the revision.
    let mut running = d.clone();
    running.state = DeploymentState::Running;
    running.started_at = Some(at(10));
    running.current_phase = 1;
    running.approved_phases = vec![1];
    running.accepted_failures = vec![1, 0];
    running.updated_at = at(10);
    assert!(store.update_deployment(&d, &running).await.unwrap());
    assert!(
        !store.update_deployment(&d, &running).await.unwrap(),
        "stale"
    );
    let stored = store.deployment(t.id, d.id).await.unwrap().unwrap();
    running.revision = 1;
    assert_eq!(stored, running);

    // Statistics per phase.
    let stats = store.deployment_stats(&stored).await.unwrap();
    assert_eq!(stats.len(), 2);
    assert_eq!((stats[0].total, stats[0].queued), (2, 2));
    assert_eq!(stats[1].total, 3);

    // The artifact is in use: it cannot be deleted.
    assert!(matches!(
        store.delete_artifact(t.id, a).await,
        Err(StoreError::Conflict(_))
    ));
    // A device of another tenant or an unknown artifact: nothing is stored.
    let theirs = devices(store, other.id, 1).await;
    let d2 = deployment(t.id, a);
    assert!(
        store
            .create_deployment(&d2, &targets(&d2, &theirs))
            .await
            .is_err()
    );
    assert_eq!(store.deployment(t.id, d2.id).await.unwrap(), None);
    let d3 = deployment(t.id, ArtifactId::from_uuid(Uuid::now_v7()));
    assert!(store.create_deployment(&d3, &[]).await.is_err());

    let page = store
        .list_deployments(t.id, &PageRequest::first(limit(10)))
        .await
        .unwrap();
    assert_eq!(page.items.len(), 1);
}

pub async fn deployment_targets_notify_report_and_page(store: &dyn Store) {
    let t = new_tenant(store, "dept-a").await;
    let a = artifact(store, t.id).await;
    let devs = devices(store, t.id, 5).await;
    let mut d = deployment(t.id, a);
    d.state = DeploymentState::Running;
    store
        .create_deployment(&d, &targets(&d, &devs))
        .await
        .unwrap();

    // Only the current phase is due, earlier phases first.
    let due = store.due_deployment_targets(&d, at(1), 10).await.unwrap();
    assert_eq!(due.len(), 2);
    assert!(due.iter().all(|x| x.phase == 0));
    let first = &due[0];
    let notified = first.notify(at(1)).unwrap();
    assert!(
        store
            .update_deployment_target(first, &notified)
            .await
            .unwrap()
    );
    assert!(
        !store
            .update_deployment_target(first, &notified)
            .await
            .unwrap(),
        "stale"
    );
    assert_eq!(store.deployment_load(&d, at(0)).await.unwrap(), (1, 1));
    assert_eq!(store.deployment_load(&d, at(2)).await.unwrap(), (0, 1));
    assert_eq!(
        store
            .active_targets_for_device(t.id, first.device_id)
            .await
            .unwrap(),
        vec![notified.clone()]
    );

    // A failure with attempts left is queued for later, with its log.
    let report = Report {
        state: Some(TargetState::Failed),
        progress: None,
        error: Some("no space".into()),
        log: vec!["line é".into()],
    };
    let failed = notified.apply(&report, &d.options, at(2)).unwrap();
    assert!(
        store
            .update_deployment_target(&notified, &failed)
            .await
            .unwrap()
    );
    let back = store
        .deployment_target(t.id, d.id, first.device_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back, failed);
    assert!(back.retry_at.is_some());
    let due = store.due_deployment_targets(&d, at(2), 10).await.unwrap();
    assert_eq!(due.len(), 1, "the failed one waits for its back-off");
    let due = store
        .due_deployment_targets(&d, at(100_000), 10)
        .await
        .unwrap();
    assert_eq!(due.len(), 2);

    // Bulk notification: only due targets move, each one attempt more.
    let due_now = store.due_deployment_targets(&d, at(3), 10).await.unwrap();
    assert_eq!(due_now.len(), 1);
    assert_eq!(
        store.due_deployment_devices(&d, at(3), 10).await.unwrap(),
        due_now.iter().map(|x| x.device_id).collect::<Vec<_>>()
    );
    let mut ask: Vec<DeviceId> = devs.clone();
    ask.push(DeviceId::from_uuid(Uuid::now_v7()));
    let moved = store
        .notify_deployment_targets(&d, &ask, at(3))
        .await
        .unwrap();
    assert_eq!(moved.len(), 1, "phase 2 and the failed one wait");
    assert_eq!(moved[0].device_id, due_now[0].device_id);
    assert_eq!(
        (moved[0].state, moved[0].attempts),
        (TargetState::Notified, 1)
    );
    assert_eq!(moved[0].notified_at, Some(at(3)));
    assert!(
        store
            .notify_deployment_targets(&d, &ask, at(3))
            .await
            .unwrap()
            .is_empty()
    );

    // Paging and filtering by state.
    let page = store
        .deployment_targets(t.id, d.id, None, &PageRequest::first(limit(3)))
        .await
        .unwrap();
    assert_eq!(page.items.len(), 3);
    let rest = store
        .deployment_targets(
            t.id,
            d.id,
            None,
            &PageRequest {
                after: page.next,
                limit: limit(3),
            },
        )
        .await
        .unwrap();
    assert_eq!(rest.items.len(), 2);
    assert!(rest.next.is_none());
    let queued = store
        .deployment_targets(
            t.id,
            d.id,
            Some(TargetState::Queued),
            &PageRequest::first(limit(10)),
        )
        .await
        .unwrap();
    assert_eq!(queued.items.len(), 4);

    // Adding targets later (continuous) skips devices already in.
    let more = devices(store, t.id, 1).await;
    let mut extra = targets(&d, &[devs[0], more[0]]);
    for x in &mut extra {
        x.phase = 1;
    }
    assert_eq!(store.add_deployment_targets(&extra).await.unwrap(), 1);
    let mine = store
        .device_deployment_targets(t.id, more[0], &PageRequest::first(limit(10)))
        .await
        .unwrap();
    assert_eq!(mine.items.len(), 1);
}

/// Deployments bigger than one multi-row insert, and the attempt number a device sees across
/// an operator's retry.
pub async fn deployment_targets_in_bulk_and_retried(store: &dyn Store) {
    let t = new_tenant(store, "depb-a").await;
    let a = artifact(store, t.id).await;
    let devs = devices(store, t.id, crate::deployments::INSERT_CHUNK + 21).await;
    let mut d = deployment(t.id, a);
    d.state = DeploymentState::Running;
    d.phases = vec![Phase::new(Amount::Percent(100))];
    d.options.max_attempts = 1;
    let all: Vec<Target> = devs
        .iter()
        .map(|dev| Target::new(t.id, d.id, *dev, 0, T0))
        .collect();
    // Half of them at creation, the rest added later together with some already in.
    let half = devs.len() / 2;
    store.create_deployment(&d, &all[..half]).await.unwrap();
    assert_eq!(
        store
            .add_deployment_targets(&all[half - 10..])
            .await
            .unwrap(),
        u64::try_from(devs.len() - half).unwrap()
    );
    let stats = store.deployment_stats(&d).await.unwrap();
    assert_eq!(stats[0].total as usize, devs.len());
    // Which devices are in it, in bulk; another tenant's view is empty.
    let mut ask = devs.clone();
    ask.push(DeviceId::from_uuid(Uuid::now_v7()));
    assert_eq!(
        store
            .deployment_targets_among(t.id, d.id, &ask)
            .await
            .unwrap()
            .len(),
        devs.len()
    );
    let other = new_tenant(store, "depb-b").await;
    assert!(
        store
            .deployment_targets_among(other.id, d.id, &ask)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .deployment_targets_among(t.id, d.id, &[])
            .await
            .unwrap()
            .is_empty()
    );

    // Notified, failed for good (one attempt), retried by an operator: a new attempt number.
    let moved = store
        .notify_deployment_targets(&d, &devs[..3], at(1))
        .await
        .unwrap();
    assert_eq!(moved.len(), 3);
    assert!(moved.iter().all(|x| x.notifications == 1));
    let report = Report {
        state: Some(TargetState::Failed),
        ..Report::default()
    };
    let failed = moved[0].apply(&report, &d.options, at(2)).unwrap();
    assert_eq!(failed.state, TargetState::Failed);
    assert!(
        store
            .update_deployment_target(&moved[0], &failed)
            .await
            .unwrap()
    );
    let retried = failed.retry(at(3)).unwrap();
    assert!(
        store
            .update_deployment_target(&failed, &retried)
            .await
            .unwrap()
    );
    let again = store
        .notify_deployment_targets(&d, &devs[..1], at(4))
        .await
        .unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!((again[0].attempts, again[0].notifications), (1, 2));
    assert_eq!(
        store
            .deployment_target(t.id, d.id, devs[0])
            .await
            .unwrap()
            .unwrap(),
        again[0]
    );
}
