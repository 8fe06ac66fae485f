//! The conformance suite against the embedded SQLite adapter.
#![allow(clippy::unwrap_used, clippy::expect_used)]

tender_store::conformance_suite!(tender_store::conformance::sqlite_fixture);
