//! Tracing set-up: pretty for people, JSON for machines.

use std::sync::Mutex;

use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Keeps the log writer thread alive; [`flush`] drops it to write out the rest.
static GUARD: Mutex<Option<WorkerGuard>> = Mutex::new(None);

/// Installs the global subscriber. `RUST_LOG` wins over the configured level.
///
/// Lines are written to stdout by a dedicated thread, so request handlers never
/// wait on the terminal or a pipe; the writer is not lossy (audit events must not
/// be dropped): when its buffer is full, loggers wait.
pub fn init(log: &LogConfig) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .finish(std::io::stdout());
    // Colours only for a terminal: log files and collectors get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(writer);
    // try_init: tests may install a subscriber more than once.
    let installed = match log.format {
        LogFormat::Pretty => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    if installed.is_ok()
        && let Ok(mut g) = GUARD.lock()
    {
        *g = Some(guard);
    }
}

/// Writes out every buffered line; call before the process exits (statics are not
/// dropped, so without this the last lines — e.g. audit events — could be lost).
pub fn flush() {
    if let Ok(mut g) = GUARD.lock() {
        drop(g.take());
    }
}
