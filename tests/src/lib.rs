//! End-to-end test helpers live in tests/e2e.rs.
