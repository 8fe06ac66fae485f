//! The Tender device SDK: what the `tender-agent` binary is made of, for programs that embed a
//! device.
//!
//! - [`identity`]: the device key, enrollment over HTTPS and certificate renewal.
//! - [`mqtt`]: an MQTT 5 client over mTLS with a reconnecting supervisor.
//! - [`telemetry`]: system metrics from `/proc` as the telemetry payload.
//! - [`inventory`]: the device inventory (OS, hardware, network, inventory scripts) and its
//!   change tracking.
//! - [`custom`]: custom metrics from collector programs and the local spool directory.
//! - [`backoff`]: exponential back-off with full jitter.
//! - [`buffer`]: the on-disk store-and-forward buffer for records waiting to be delivered.
//! - [`desired`]: applies the desired state (configuration handlers) and reports it.
//! - [`commands`]: runs commands from the server and reports their outcome.
//! - [`deploy`]: deployments from the server: download, install through [`update`], report.
//! - [`download`]: resumable artifact downloads streamed into a blocking reader.
//! - [`logs`]: remote logs: configured sources read, gzipped and uploaded, or followed.
//! - [`update`]: over-the-air updates: signed artifacts, update modules, the journaled state
//!   machine.
//! - [`config`], [`status`], [`agent`]: the agent's configuration, status file and main loop.
#![forbid(unsafe_code)]

pub mod agent;
pub mod backoff;
pub mod buffer;
pub mod commands;
pub mod config;
pub mod custom;
pub mod deploy;
pub mod desired;
pub mod download;
pub mod identity;
pub mod inventory;
pub mod logs;
pub mod mqtt;
pub mod status;
pub mod telemetry;
pub mod update;
