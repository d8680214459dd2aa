//! What every property test (`tests/prop_*.rs`, in several crates) shares: the case
//! budget, the per-case time bound and the statistics printed at the end.
//!
//! Other crates include this file with `#[path = ".../prop_support/mod.rs"] mod
//! prop_support;` so the budget rules live in one place.
//!
//! Budget. Each test names its default case count, sized so that the whole property
//! suite adds well under a minute of CPU to `cargo nextest run` (debug build). Two
//! environment variables change it, for the long run (`scripts/fuzz-long.sh`):
//! `PROPTEST_CASES` (proptest's own name) sets every test's count, and
//! `BADGE_PROPTEST_MULTIPLIER` multiplies each test's default (cheap tests keep
//! running more cases than expensive ones).
//!
//! Time. A parser that is slow on some input is a denial of service, so every case
//! is timed and must finish within [`CASE_LIMIT`]. A slow case is re-run twice and
//! the fastest run counts: the machine is shared, and a preempted thread is not a
//! slow parser.
//!
//! Statistics. Each test prints (stderr) its case count, the longest input tried and
//! the slowest case; with `BADGE_PROPTEST_REPORT=<file>` it also appends that line
//! to the file (the long run's summary).
#![allow(
    clippy::panic,
    clippy::expect_used,
    clippy::disallowed_methods,
    reason = "test support: a failure fails the property test that called it"
)]
#![allow(dead_code, clippy::unwrap_used)]

use std::io::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};

/// The longest one case may take (the fastest of three runs).
pub const CASE_LIMIT: Duration = Duration::from_millis(50);

/// Wall-clock limits are multiplied by `BADGE_PROPTEST_TIME_SCALE` (default 1): the
/// long run oversubscribes the CPU on purpose (every test at once, `nice -n 19`), so
/// a wall-clock millisecond there is worth far less than one on an idle core.
pub fn time_scale() -> u32 {
    env_u64("BADGE_PROPTEST_TIME_SCALE").map_or(1, |n| u32::try_from(n.max(1)).unwrap_or(u32::MAX))
}

/// The case count for a test whose default is `default`.
pub fn cases(default: u32) -> u32 {
    if let Some(n) = env_u64("PROPTEST_CASES") {
        return u32::try_from(n).unwrap_or(u32::MAX);
    }
    let m = env_u64("BADGE_PROPTEST_MULTIPLIER").unwrap_or(1);
    u32::try_from(u64::from(default).saturating_mul(m)).unwrap_or(u32::MAX)
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok()?.trim().parse().ok()
}

/// A runner for `cases` cases. No regression files are written into the source
/// tree: a failure prints the minimal input, which becomes a unit test.
pub fn runner(cases: u32) -> TestRunner {
    TestRunner::new(Config {
        cases,
        failure_persistence: None,
        // Many generated inputs are rejected by design; never stop on that.
        max_global_rejects: u32::MAX,
        max_shrink_iters: 4096,
        ..Config::default()
    })
}

/// Case count, longest input and slowest case of one test.
pub struct Stats {
    name: &'static str,
    cases: AtomicU64,
    max_len: AtomicUsize,
    slowest_micros: AtomicU64,
}

impl Stats {
    pub fn new(name: &'static str) -> Self {
        Stats {
            name,
            cases: AtomicU64::new(0),
            max_len: AtomicUsize::new(0),
            slowest_micros: AtomicU64::new(0),
        }
    }

    /// Runs one case on an input of `len` bytes, within [`CASE_LIMIT`]. `f` must be
    /// deterministic (it may run up to three times).
    pub fn case<T>(
        &self,
        len: usize,
        mut f: impl FnMut() -> Result<T, TestCaseError>,
    ) -> Result<T, TestCaseError> {
        self.cases.fetch_add(1, Ordering::Relaxed);
        self.max_len.fetch_max(len, Ordering::Relaxed);
        let limit = CASE_LIMIT * time_scale();
        let mut best = Duration::MAX;
        let mut out = None;
        for _ in 0..3 {
            let start = Instant::now();
            let r = f();
            best = best.min(start.elapsed());
            out = Some(r);
            if best <= limit {
                break;
            }
        }
        let micros = u64::try_from(best.as_micros()).unwrap_or(u64::MAX);
        self.slowest_micros.fetch_max(micros, Ordering::Relaxed);
        if best > limit {
            return Err(TestCaseError::fail(format!(
                "{}: a {len}-byte input took {best:?} (limit {limit:?})",
                self.name
            )));
        }
        out.unwrap()
    }

    /// Runs `strategy` through `test`, then prints the statistics; panics with the
    /// minimal failing input on failure. With `BADGE_PROPTEST_DEADLINE=<unix
    /// seconds>` (the long run) the cases run in chunks and stop early at the
    /// deadline; the printed count is the number actually run.
    pub fn run<S: Strategy>(
        &self,
        default_cases: u32,
        strategy: &S,
        test: impl Fn(S::Value) -> Result<(), TestCaseError>,
    ) where
        S::Value: std::fmt::Debug,
    {
        let total = cases(default_cases);
        let deadline = env_u64("BADGE_PROPTEST_DEADLINE")
            .map(|secs| std::time::UNIX_EPOCH + Duration::from_secs(secs));
        let chunk = if deadline.is_some() {
            5_000
        } else {
            total.max(1)
        };
        let mut done = 0;
        let mut result = Ok(());
        while done < total && result.is_ok() {
            let n = chunk.min(total - done);
            // Each chunk draws a fresh random seed.
            result = runner(n).run(strategy, &test);
            done += n;
            if deadline.is_some_and(|d| std::time::SystemTime::now() >= d) {
                break;
            }
        }
        self.report();
        match result {
            Ok(()) => {}
            Err(TestError::Abort(why)) => panic!("{}: aborted: {why}", self.name),
            Err(TestError::Fail(why, input)) => {
                panic!("{}: {why}\nminimal failing input: {input:#?}", self.name)
            }
        }
    }

    /// Prints the statistics line (and appends it to `BADGE_PROPTEST_REPORT`).
    pub fn report(&self) {
        let line = format!(
            "proptest {}: {} cases, longest input {} bytes, slowest case {} µs",
            self.name,
            self.cases.load(Ordering::Relaxed),
            self.max_len.load(Ordering::Relaxed),
            self.slowest_micros.load(Ordering::Relaxed),
        );
        eprintln!("{line}");
        if let Ok(path) = std::env::var("BADGE_PROPTEST_REPORT")
            && let Ok(mut f) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
        {
            let _ = writeln!(f, "{line}");
        }
    }
}

/// Times one hand-made worst-case input (e.g. 1 MiB): it must finish within
/// `limit` (fastest of three runs); prints and reports the time.
pub fn worst_case<T>(name: &'static str, len: usize, limit: Duration, mut f: impl FnMut() -> T) {
    let limit = limit * time_scale();
    let mut best = Duration::MAX;
    for _ in 0..3 {
        let start = Instant::now();
        std::hint::black_box(f());
        best = best.min(start.elapsed());
        if best <= limit {
            break;
        }
    }
    let stats = Stats::new(name);
    stats.cases.store(1, Ordering::Relaxed);
    stats.max_len.store(len, Ordering::Relaxed);
    stats.slowest_micros.store(
        u64::try_from(best.as_micros()).unwrap_or(u64::MAX),
        Ordering::Relaxed,
    );
    stats.report();
    assert!(
        best <= limit,
        "{name}: a {len}-byte input took {best:?} (limit {limit:?})"
    );
}

/// Byte-wise mutations of a valid input: each (position, operation, byte) edits one
/// place. Positions are taken modulo the input's length.
#[derive(Debug, Clone)]
pub enum Edit {
    /// Replace the byte at the position.
    Replace(usize, u8),
    /// Insert a byte before the position.
    Insert(usize, u8),
    /// Delete the byte at the position.
    Delete(usize),
    /// Flip one bit of the byte at the position.
    Flip(usize, u8),
    /// Duplicate a range (start, length) in place.
    Duplicate(usize, usize),
    /// Cut the input at the position.
    Truncate(usize),
}

/// Up to `max` edits, biased towards bytes that matter to the formats under test.
pub fn edits(max: usize) -> impl Strategy<Value = Vec<Edit>> {
    use proptest::prelude::*;
    let byte = prop_oneof![
        any::<u8>(),
        proptest::sample::select(b".=,!()[]{}\":-_/ \n\t\\0aAzZ9+".to_vec()),
    ];
    let edit = prop_oneof![
        (any::<usize>(), byte.clone()).prop_map(|(p, b)| Edit::Replace(p, b)),
        (any::<usize>(), byte).prop_map(|(p, b)| Edit::Insert(p, b)),
        any::<usize>().prop_map(Edit::Delete),
        (any::<usize>(), 0u8..8).prop_map(|(p, b)| Edit::Flip(p, b)),
        (any::<usize>(), 1usize..16).prop_map(|(p, n)| Edit::Duplicate(p, n)),
        any::<usize>().prop_map(Edit::Truncate),
    ];
    proptest::collection::vec(edit, 1..=max)
}

/// Applies `edits` to `input`.
pub fn apply(input: &[u8], edits: &[Edit]) -> Vec<u8> {
    let mut out = input.to_vec();
    for e in edits {
        let n = out.len();
        match *e {
            Edit::Replace(p, b) if n > 0 => out[p % n] = b,
            Edit::Insert(p, b) => out.insert(p % (n + 1), b),
            Edit::Delete(p) if n > 0 => {
                out.remove(p % n);
            }
            Edit::Flip(p, bit) if n > 0 => out[p % n] ^= 1 << bit,
            Edit::Duplicate(p, len) if n > 0 => {
                let start = p % n;
                let end = (start + len).min(n);
                let copy = out[start..end].to_vec();
                out.splice(end..end, copy);
            }
            Edit::Truncate(p) => out.truncate(p % (n + 1)),
            _ => {}
        }
    }
    out
}

/// Exercise the tree API once so an unused-import lint never fires in crates that
/// only use part of this module.
pub fn sample<S: Strategy>(s: &S) -> S::Value {
    let mut r = TestRunner::deterministic();
    s.new_tree(&mut r).unwrap().current()
}
