//! The conformance suite against PostgreSQL (a fresh database per test on the server named by
//! `TENDER_TEST_POSTGRES_URL`, default the local one).
#![allow(clippy::unwrap_used, clippy::expect_used)]

tender_store::conformance_suite!(tender_store::conformance::postgres_fixture);
