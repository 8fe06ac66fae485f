//! The telemetry writer: every device's telemetry goes through one bounded queue to a writer
//! that commits it in batches (group commit), and a message is acknowledged only once the
//! transaction holding it has committed.
//!
//! - **Durable before acknowledged.** [`TelemetryWriter::write`] returns when the samples are
//!   committed (or failed); the gateway sends PUBACK only then. A crash loses only messages
//!   not yet acknowledged, which devices send again.
//! - **Group commit.** The writer takes everything queued (up to `max_batch_points`) into one
//!   transaction of [`insert_sample_batches`](tender_store::TelemetryStore::insert_sample_batches):
//!   while one batch commits, the next one gathers, so the cost of a commit (an fsync on
//!   SQLite, a round trip on PostgreSQL) is shared by every message waiting.
//! - **Back-pressure, never loss.** The queue holds at most `queue_capacity` points. A message
//!   that does not fit waits for room; its session waits with it, so the device gets no
//!   PUBACK and, once its in-flight window is full, stops sending: devices are slowed, not
//!   dropped. Waits are counted in `tender_telemetry_backpressure_waits_total`.
//! - **One bad device does not fail the others.** When a batch fails because one of its
//!   devices no longer exists, its messages are written one by one, so each gets its own
//!   answer.
//! - **Stored samples are announced** on a broadcast channel ([`TelemetryWriter::subscribe`])
//!   after commit, for consumers such as alert evaluation. A consumer that falls more than
//!   [`ANNOUNCE_CAPACITY`] batches behind misses batches and is told so by the channel
//!   (`RecvError::Lagged`); the samples are stored all the same.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Instant;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use serde::Deserialize;
use tender_core::telemetry::Sample;
use tender_core::{DeviceId, TenantId};
use tender_store::{DeviceSamples, DynStore, StoreError};
use tokio::sync::{Mutex, Semaphore, broadcast, mpsc, oneshot};

/// How many stored batches the announcement channel keeps for a slow consumer.
pub const ANNOUNCE_CAPACITY: usize = 4096;

/// `[telemetry]` in the server configuration.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// Points accepted from devices but not yet committed, at most. A message beyond waits
    /// (and its device with it).
    pub queue_capacity: usize,
    /// Points committed in one transaction, at most.
    pub max_batch_points: usize,
    /// Writer tasks committing batches concurrently. Default: 1 on SQLite (one writer at a
    /// time anyway), 4 on PostgreSQL (measured: 100k points/s with one, 165k with two to four;
    /// docs/BENCHMARKS.md).
    pub writers: Option<usize>,
    /// Samples older than this many days are deleted; 0 keeps them forever.
    pub retention_days: u32,
    /// How often the retention pass runs, in seconds.
    pub retention_interval_secs: u64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            queue_capacity: 200_000,
            max_batch_points: 20_000,
            writers: None,
            retention_days: 30,
            retention_interval_secs: 3600,
        }
    }
}

impl TelemetryConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.queue_capacity == 0 || self.max_batch_points == 0 {
            return Err(
                "telemetry.queue_capacity and telemetry.max_batch_points must be at least 1".into(),
            );
        }
        if let Some(w) = self.writers
            && !(1..=32).contains(&w)
        {
            return Err(format!("telemetry.writers must be 1 to 32, not {w}"));
        }
        if self.retention_interval_secs == 0 {
            return Err("telemetry.retention_interval_secs must be at least 1".into());
        }
        Ok(())
    }
}

/// Why samples were not stored.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The server is stopping: nothing was written.
    #[error("the server is stopping")]
    Stopped,
}

/// The writer's Prometheus metrics (registered under `tender_telemetry_*`).
#[derive(Clone)]
pub struct TelemetryMetrics {
    pub points_stored: Counter,
    pub messages_stored: Counter,
    pub write_failures: Counter,
    pub queued_points: Gauge,
    pub backpressure_waits: Counter,
    pub batch_points: Histogram,
    pub commit_seconds: Histogram,
    pub ack_seconds: Histogram,
    pub points_pruned: Counter,
}

impl TelemetryMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = TelemetryMetrics {
            points_stored: Counter::default(),
            messages_stored: Counter::default(),
            write_failures: Counter::default(),
            queued_points: Gauge::default(),
            backpressure_waits: Counter::default(),
            // 1 .. ~65k points
            batch_points: Histogram::new(exponential_buckets(1.0, 2.0, 17)),
            // 0.1 ms .. ~6.5 s
            commit_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 17)),
            ack_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 17)),
            points_pruned: Counter::default(),
        };
        registry.register(
            "telemetry_points_stored",
            "Telemetry samples committed to the store",
            m.points_stored.clone(),
        );
        registry.register(
            "telemetry_messages_stored",
            "Telemetry messages committed to the store",
            m.messages_stored.clone(),
        );
        registry.register(
            "telemetry_write_failures",
            "Telemetry messages the store refused or could not take (the device is told to retry)",
            m.write_failures.clone(),
        );
        registry.register(
            "telemetry_queued_points",
            "Telemetry samples accepted and waiting for their commit (ingest lag)",
            m.queued_points.clone(),
        );
        registry.register(
            "telemetry_backpressure_waits",
            "Telemetry messages that waited for room in a full queue (devices being slowed)",
            m.backpressure_waits.clone(),
        );
        registry.register(
            "telemetry_batch_points",
            "Samples per committed telemetry batch",
            m.batch_points.clone(),
        );
        registry.register(
            "telemetry_commit_seconds",
            "Time to commit one telemetry batch (store latency)",
            m.commit_seconds.clone(),
        );
        registry.register(
            "telemetry_ack_seconds",
            "Time from a telemetry message entering the queue to its commit",
            m.ack_seconds.clone(),
        );
        registry.register(
            "telemetry_points_pruned",
            "Telemetry samples deleted by retention",
            m.points_pruned.clone(),
        );
        m
    }
}

struct Job {
    samples: DeviceSamples,
    /// Room taken in the queue, given back when the job is done.
    _room: tokio::sync::OwnedSemaphorePermit,
    queued_at: Instant,
    done: oneshot::Sender<Result<u64, WriteError>>,
}

/// The handle the gateway writes through; cheap to clone.
#[derive(Clone)]
pub struct TelemetryWriter {
    jobs: mpsc::UnboundedSender<Job>,
    room: Arc<Semaphore>,
    capacity: u32,
    queued: Arc<AtomicI64>,
    stored: broadcast::Sender<Arc<DeviceSamples>>,
    metrics: TelemetryMetrics,
}

impl TelemetryWriter {
    /// Starts the writer tasks over `store`. They run until every handle is dropped and the
    /// queue is empty.
    pub fn start(store: DynStore, config: &TelemetryConfig, metrics: TelemetryMetrics) -> Self {
        let capacity = u32::try_from(config.queue_capacity)
            .unwrap_or(u32::MAX)
            .min(Semaphore::MAX_PERMITS as u32);
        let (jobs, rx) = mpsc::unbounded_channel();
        let (stored, _) = broadcast::channel(ANNOUNCE_CAPACITY);
        let writer = TelemetryWriter {
            jobs,
            room: Arc::new(Semaphore::new(capacity as usize)),
            capacity,
            queued: Arc::new(AtomicI64::new(0)),
            stored,
            metrics,
        };
        let rx = Arc::new(Mutex::new(rx));
        let writers = config.writers.unwrap_or(match store.backend() {
            tender_store::Backend::Sqlite => 1,
            tender_store::Backend::Postgres => 4,
        });
        for _ in 0..writers.max(1) {
            tokio::spawn(run(
                rx.clone(),
                store.clone(),
                config.max_batch_points.max(1),
                writer.stored.clone(),
                writer.metrics.clone(),
                writer.queued.clone(),
            ));
        }
        writer
    }

    /// Stored samples, announced after each commit.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<DeviceSamples>> {
        self.stored.subscribe()
    }

    /// Queues the samples of one message and waits until they are committed. Waits first for
    /// room in the queue when it is full.
    pub async fn write(
        &self,
        tenant: TenantId,
        device: DeviceId,
        samples: Vec<Sample>,
    ) -> Result<u64, WriteError> {
        // A message larger than the whole queue takes all of it.
        let points = u32::try_from(samples.len())
            .unwrap_or(u32::MAX)
            .clamp(1, self.capacity);
        let room = match self.room.clone().try_acquire_many_owned(points) {
            Ok(room) => room,
            Err(tokio::sync::TryAcquireError::NoPermits) => {
                self.metrics.backpressure_waits.inc();
                self.room
                    .clone()
                    .acquire_many_owned(points)
                    .await
                    .map_err(|_| WriteError::Stopped)?
            }
            Err(tokio::sync::TryAcquireError::Closed) => return Err(WriteError::Stopped),
        };
        let n = samples.len() as i64;
        let (done, answer) = oneshot::channel();
        self.queued.fetch_add(n, Ordering::Relaxed);
        self.metrics
            .queued_points
            .set(self.queued.load(Ordering::Relaxed));
        let job = Job {
            samples: DeviceSamples {
                tenant,
                device,
                samples,
            },
            _room: room,
            queued_at: Instant::now(),
            done,
        };
        if self.jobs.send(job).is_err() {
            self.queued.fetch_sub(n, Ordering::Relaxed);
            return Err(WriteError::Stopped);
        }
        answer.await.map_err(|_| WriteError::Stopped)?
    }
}

async fn run(
    rx: Arc<Mutex<mpsc::UnboundedReceiver<Job>>>,
    store: DynStore,
    max_batch_points: usize,
    stored: broadcast::Sender<Arc<DeviceSamples>>,
    metrics: TelemetryMetrics,
    queued: Arc<AtomicI64>,
) {
    loop {
        let jobs = {
            let mut rx = rx.lock().await;
            let Some(first) = rx.recv().await else {
                return;
            };
            let mut points = first.samples.samples.len();
            let mut jobs = vec![first];
            while points < max_batch_points {
                match rx.try_recv() {
                    Ok(job) => {
                        points += job.samples.samples.len();
                        jobs.push(job);
                    }
                    Err(_) => break,
                }
            }
            jobs
        };
        commit(&store, jobs, &stored, &metrics, &queued).await;
    }
}

async fn commit(
    store: &DynStore,
    jobs: Vec<Job>,
    stored: &broadcast::Sender<Arc<DeviceSamples>>,
    metrics: &TelemetryMetrics,
    queued: &AtomicI64,
) {
    let (batch, waiters): (Vec<DeviceSamples>, Vec<Waiter>) = jobs
        .into_iter()
        .map(|j| {
            (
                j.samples,
                Waiter {
                    _room: j._room,
                    queued_at: j.queued_at,
                    done: j.done,
                },
            )
        })
        .unzip();
    let points: usize = batch.iter().map(|b| b.samples.len()).sum();
    let started = Instant::now();
    let result = store.insert_sample_batches(&batch).await;
    metrics
        .commit_seconds
        .observe(started.elapsed().as_secs_f64());
    metrics.batch_points.observe(points as f64);
    match result {
        Ok(_) => {
            for (samples, waiter) in batch.into_iter().zip(waiters) {
                finish(samples, waiter, Ok(()), stored, metrics, queued);
            }
        }
        // A device of the batch is gone (decommissioned and deleted, say): find which.
        Err(StoreError::NotFound(_)) if batch.len() > 1 => {
            for (samples, waiter) in batch.into_iter().zip(waiters) {
                let one = store
                    .insert_samples(samples.tenant, samples.device, &samples.samples)
                    .await
                    .map(|_| ());
                finish(samples, waiter, one, stored, metrics, queued);
            }
        }
        Err(e) => {
            for (samples, waiter) in batch.into_iter().zip(waiters) {
                finish(samples, waiter, Err(e.clone()), stored, metrics, queued);
            }
        }
    }
}

/// What is left of a job while its samples are being written.
struct Waiter {
    /// Room taken in the queue, given back when the job is done.
    _room: tokio::sync::OwnedSemaphorePermit,
    queued_at: Instant,
    done: oneshot::Sender<Result<u64, WriteError>>,
}

fn finish(
    samples: DeviceSamples,
    waiter: Waiter,
    result: Result<(), StoreError>,
    stored: &broadcast::Sender<Arc<DeviceSamples>>,
    metrics: &TelemetryMetrics,
    queued: &AtomicI64,
) {
    let n = samples.samples.len();
    queued.fetch_sub(n as i64, Ordering::Relaxed);
    metrics.queued_points.set(queued.load(Ordering::Relaxed));
    let answer = match result {
        Ok(()) => {
            metrics.points_stored.inc_by(n as u64);
            metrics.messages_stored.inc();
            metrics
                .ack_seconds
                .observe(waiter.queued_at.elapsed().as_secs_f64());
            if stored.receiver_count() > 0 {
                // Sending fails only when nobody listens any more: nothing to do then.
                let _ = stored.send(Arc::new(samples));
            }
            Ok(n as u64)
        }
        Err(e) => {
            metrics.write_failures.inc();
            Err(WriteError::Store(e))
        }
    };
    // The session may have gone away meanwhile (connection closed): nobody to answer then.
    let _ = waiter.done.send(answer);
}

/// Devices one retention call visits before the next (each is its own short transaction).
const PRUNE_DEVICES_PER_CALL: u32 = 100;

/// Retention: every `retention_interval_secs`, deletes samples older than `retention_days`,
/// device by device, so that a pass never holds the database for long (ingest goes on between
/// devices). Runs until `shutdown`.
pub async fn retention(
    state: crate::state::AppState,
    config: TelemetryConfig,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    if config.retention_days == 0 {
        return;
    }
    let every = std::time::Duration::from_secs(config.retention_interval_secs.max(1));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let before = state
            .clock
            .now()
            .plus_millis(-(i64::from(config.retention_days) * 86_400_000));
        let mut after = None;
        let mut deleted = 0;
        loop {
            if *shutdown.borrow() {
                return;
            }
            match state
                .store
                .prune_samples(before, after, PRUNE_DEVICES_PER_CALL)
                .await
            {
                Ok(p) => {
                    deleted += p.deleted;
                    state.metrics.telemetry.points_pruned.inc_by(p.deleted);
                    match p.next {
                        Some(next) => after = Some(next),
                        None => break,
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "telemetry retention failed; will retry");
                    break;
                }
            }
            tokio::task::yield_now().await;
        }
        if deleted > 0 {
            tracing::info!(deleted, %before, "telemetry retention deleted old samples");
        }
    }
}
