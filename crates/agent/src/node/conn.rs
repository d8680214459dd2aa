//! Accepting callers on the agent's socket, with bounds on what they can make the
//! agent hold.
//!
//! The socket is world-connectable (attestation, not file modes, decides who gets
//! an identity), so every local process — including hostile ones that match a
//! selector — can connect. Each accepted connection costs a file descriptor, an
//! HTTP/2 connection task and its buffers, so they are capped twice:
//!
//! - `max_connections` in all (default 1024): the bound on the agent's memory and
//!   descriptors;
//! - `max_connections_per_uid` (default 128) per caller uid (`SO_PEERCRED`): so that
//!   one local user cannot take every slot and lock the other workloads of the
//!   node out of their renewals.
//!
//! A connection over either cap is **refused**: closed as soon as it is accepted,
//! before a byte of HTTP/2 is read (clients see the connection reset and retry
//! with their backoff). A slot is given back when the connection closes.
//!
//! The caller's credentials are read here, at accept time, and carried with the
//! connection ([`ConnInfo`]) into every request made on it.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_stream::Stream;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::server::{Connected, UdsConnectInfo};

use super::metrics;

/// What the kernel said about the caller when its connection was accepted, handed
/// by tonic to every request of the connection (`Request::extensions`).
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub uds: UdsConnectInfo,
    /// The caller's supplementary groups, read from `/proc` as the connection was
    /// accepted ([`super::selector::read_groups`]); `None` when not read (no
    /// `unix:supplementary_gid` selector configured) or not readable.
    pub groups: Option<Arc<[u32]>>,
}

/// Connections held per uid (the per-uid cap).
#[derive(Default)]
struct PerUid {
    held: Mutex<HashMap<u32, usize>>,
}

impl PerUid {
    fn take(self: &Arc<Self>, uid: u32, max: usize) -> Option<UidSlot> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let n = held.entry(uid).or_default();
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(UidSlot {
            owner: self.clone(),
            uid,
        })
    }
}

/// One of a uid's connection slots, given back on drop.
struct UidSlot {
    owner: Arc<PerUid>,
    uid: u32,
}

impl Drop for UidSlot {
    fn drop(&mut self) {
        let mut held = self.owner.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = held.get_mut(&self.uid) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                held.remove(&self.uid);
            }
        }
    }
}

/// An accepted connection holding its slots until it is dropped (closed).
pub struct Conn {
    io: UnixStream,
    info: ConnInfo,
    _slot: OwnedSemaphorePermit,
    _uid_slot: Option<UidSlot>,
}

impl Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The connection caps.
#[derive(Debug, Clone, Copy)]
pub struct Caps {
    pub max_connections: usize,
    pub max_connections_per_uid: usize,
    /// Whether to read callers' supplementary groups (only when a selector needs them).
    pub read_groups: bool,
}

/// The accepted connections of `listener`, each given its slots (over a cap: closed
/// at once and not yielded) and its caller's credentials.
pub fn incoming(listener: UnixListener, caps: Caps) -> impl Stream<Item = io::Result<Conn>> {
    let slots = Arc::new(Semaphore::new(caps.max_connections));
    let per_uid = Arc::new(PerUid::default());
    let refused = Arc::new(AtomicU64::new(0));
    UnixListenerStream::new(listener).filter_map(move |accepted| {
        let io = match accepted {
            Ok(io) => io,
            Err(e) => return Some(Err(e)),
        };
        let uds = io.connect_info();
        let uid = uds.peer_cred.map(|c| c.uid());
        let slot = slots.clone().try_acquire_owned().ok();
        // Without credentials no uid slot is needed: such a caller is refused by
        // attestation on its first request anyway.
        let uid_slot = match uid {
            Some(u) => per_uid.take(u, caps.max_connections_per_uid).map(Some),
            None => Some(None),
        };
        match (slot, uid_slot) {
            (Some(slot), Some(uid_slot)) => {
                // Read now, while the caller's end is open and before anything is
                // served: the shortest window for its pid to be reused (see
                // selector.rs). A small procfs read; fails closed.
                let groups = match (caps.read_groups, uds.peer_cred) {
                    (true, Some(c)) => super::selector::read_groups(c.pid(), c.uid(), c.gid()),
                    _ => None,
                };
                Some(Ok(Conn {
                io,
                info: ConnInfo { uds, groups },
                _slot: slot,
                _uid_slot: uid_slot,
            }))
            }
            (slot, _) => {
                let which = if slot.is_none() {
                    "max_connections"
                } else {
                    "max_connections_per_uid"
                };
                metrics::denied("connection_limit");
                // A flood of refusals must not flood the log: the 1st, 2nd, 4th,
                // 8th, … are logged, with the running count.
                let n = refused.fetch_add(1, Ordering::Relaxed) + 1;
                if n.is_power_of_two() {
                    tracing::warn!(uid = ?uid, refused_so_far = n, "connection refused: {which} reached");
                }
                drop(io);
                None
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_uid_slots_are_given_back() {
        let p = Arc::new(PerUid::default());
        let a = p.take(1000, 2).expect("first");
        let b = p.take(1000, 2).expect("second");
        assert!(p.take(1000, 2).is_none(), "third refused");
        assert!(p.take(1001, 2).is_some(), "another uid has its own slots");
        drop(a);
        let c = p.take(1000, 2).expect("a slot freed");
        drop((b, c));
        assert!(
            p.held.lock().expect("lock").is_empty(),
            "no entry left behind"
        );
    }
}
