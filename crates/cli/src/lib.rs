//! See src/bin/badge.rs.
