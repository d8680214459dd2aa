//! The feed relay: one reader of the change feed per store, however many follow it
//! (issue #17 goal 3).
//!
//! Why: every follower (each Watch stream, each records index, the controllers)
//! used to read each change from the database itself on every wake, so the
//! database's work per change grew with the number of watchers. Now one task per
//! store reads the feed once per wake into a bounded in-memory ring and announces
//! how far the ring reaches; followers ([`Follower`]) are served from the ring and
//! read the database only when their cursor is older than the ring's start (a
//! stream resumed from an old revision, or one that fell more than the ring's
//! capacity behind) — that read also answers `OutOfRange` after compaction, as
//! before.
//!
//! Correctness rests on the store's writes: every write transaction locks the
//! revision counter row first and holds it to COMMIT (see `write.rs`), so commit
//! order is revision order and any snapshot of the feed is a prefix with no holes.
//! A read of "revision > tail" therefore never skips a revision that commits later,
//! and a read that comes back short (fewer than asked) covers everything up to the
//! counter of its snapshot. The ring holds exactly the database's entries with
//! `start < revision <= through`, so serving a cursor in that range is the same
//! as `read_feed(cursor, ..)`.
//!
//! The task starts with the first [`crate::Store::follow`], holds only a weak
//! reference to the store (so it never keeps it alive), and stops with the last
//! store clone. When a read fails it retries with a backoff while followers wait:
//! a follower that is caught up sees no error, exactly as it would see no wake
//! while the database is down. Entries are held as read (unreadable ones as
//! [`FeedEntry::Unreadable`]): each follower decides what they mean to it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use badge_core::{Error, Result};
use tokio::sync::{oneshot, watch};

use crate::types::FeedEntry;
use crate::{Inner, Store};

/// Entries the relay reads per round trip while catching up.
const READ_BATCH: i64 = 1000;
const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// The ring and what it covers.
struct Ring {
    entries: VecDeque<Arc<FeedEntry>>,
    /// Every feed entry with `start < revision <= through` is in `entries`.
    start: i64,
    through: i64,
    /// False until the relay's first read (and after a reset): nothing is served.
    ready: bool,
    capacity: usize,
}

impl Ring {
    /// Drops entries up to `revision` (they are compacted, or too old to keep).
    fn cut(&mut self, revision: i64) {
        while self
            .entries
            .front()
            .is_some_and(|e| e.revision() <= revision)
        {
            self.entries.pop_front();
        }
        self.start = self.start.max(revision);
    }
}

/// What the relay shares with its followers.
pub(crate) struct Relay {
    ring: Mutex<Ring>,
    /// `through` of the ring, published after every read that moved it (never
    /// decreases); -1 until the first read.
    through: watch::Sender<i64>,
}

/// Held by the store: the relay, and the stop signal of its task (dropped with
/// the last store clone).
pub(crate) struct RelayHandle {
    pub(crate) relay: Arc<Relay>,
    _stop: oneshot::Sender<()>,
}

/// What [`Relay::serve`] could do for a cursor.
enum Served {
    Batch(FollowBatch),
    /// The cursor is older than the ring's start: read the database.
    Behind,
    /// The relay has not read the feed yet.
    NotReady,
}

impl Relay {
    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Ring>> {
        self.ring
            .lock()
            .map_err(|_| Error::Internal("the feed relay's ring lock is poisoned".into()))
    }

    fn serve(&self, cursor: i64, limit: usize) -> Result<Served> {
        let ring = self.lock()?;
        if !ring.ready {
            return Ok(Served::NotReady);
        }
        if cursor < ring.start {
            return Ok(Served::Behind);
        }
        if cursor >= ring.through {
            return Ok(Served::Batch(FollowBatch {
                entries: Vec::new(),
                through: cursor,
            }));
        }
        let first = ring.entries.partition_point(|e| e.revision() <= cursor);
        let entries: Vec<_> = ring.entries.range(first..).take(limit).cloned().collect();
        let through = if first + entries.len() == ring.entries.len() {
            ring.through
        } else {
            entries.last().map_or(ring.through, |e| e.revision())
        };
        Ok(Served::Batch(FollowBatch { entries, through }))
    }

    /// Where the next read starts (None: the ring has to be placed first).
    fn tail(&self) -> Result<Option<i64>> {
        let ring = self.lock()?;
        Ok(ring.ready.then_some(ring.through))
    }

    /// An empty ring at `revision`: followers at or after it are served from here on.
    fn place(&self, revision: i64) -> Result<()> {
        {
            let mut ring = self.lock()?;
            ring.entries.clear();
            ring.start = revision;
            ring.through = revision;
            ring.ready = true;
        }
        self.announce(revision);
        Ok(())
    }

    /// Appends one read of the feed after the tail. `complete`: the read came back
    /// short, so it covers everything up to `counter`.
    fn append(
        &self,
        entries: Vec<FeedEntry>,
        counter: i64,
        compacted: i64,
        complete: bool,
    ) -> Result<()> {
        let through = {
            let mut ring = self.lock()?;
            let last = entries.last().map(FeedEntry::revision);
            ring.entries.extend(entries.into_iter().map(Arc::new));
            let mut through = last.unwrap_or(ring.through).max(ring.through);
            if complete {
                through = through.max(counter);
            }
            ring.through = through;
            let excess = ring.entries.len().saturating_sub(ring.capacity);
            if excess > 0 {
                let last_dropped = ring.entries.get(excess - 1).map(|e| e.revision());
                if let Some(r) = last_dropped {
                    ring.cut(r);
                }
            }
            // History the database no longer has is not served either: a follower
            // behind the compaction mark reads the database and gets OutOfRange.
            if compacted > ring.start {
                ring.cut(compacted);
            }
            through
        };
        self.announce(through);
        Ok(())
    }

    /// Forgets the ring (it fell behind the compaction mark); the next round
    /// places it again at the current revision.
    fn reset(&self) -> Result<()> {
        let mut ring = self.lock()?;
        ring.entries.clear();
        ring.ready = false;
        Ok(())
    }

    /// This process compacted the feed up to `revision`.
    pub(crate) fn compacted(&self, revision: i64) {
        if let Ok(mut ring) = self.ring.lock()
            && ring.ready
        {
            ring.cut(revision);
        }
    }

    fn announce(&self, through: i64) {
        self.through.send_if_modified(|t| {
            let moved = through > *t;
            if moved {
                *t = through;
            }
            moved
        });
    }
}

/// Starts the relay task of `store`; must be called inside a Tokio runtime.
pub(crate) fn start(store: &Store, capacity: usize) -> RelayHandle {
    let relay = Arc::new(Relay {
        ring: Mutex::new(Ring {
            entries: VecDeque::new(),
            start: 0,
            through: 0,
            ready: false,
            capacity: capacity.max(1),
        }),
        through: watch::channel(-1).0,
    });
    let (stop_tx, stop_rx) = oneshot::channel();
    let weak = Arc::downgrade(&store.inner);
    let wake = store.subscribe();
    let task_relay = relay.clone();
    tokio::spawn(async move {
        tokio::select! {
            // Fires (with Err) when the last Store clone drops the sender.
            _ = stop_rx => {}
            () = run(weak, &task_relay, wake) => {}
        }
        tracing::debug!("store feed relay stopped");
    });
    RelayHandle {
        relay,
        _stop: stop_tx,
    }
}

async fn run(weak: Weak<Inner>, relay: &Relay, mut wake: watch::Receiver<i64>) {
    let mut backoff = MIN_BACKOFF;
    loop {
        // Marked seen before the read: a commit announced during it wakes us again.
        wake.borrow_and_update();
        let Some(inner) = weak.upgrade() else { return };
        let outcome = catch_up(&Store { inner }, relay).await;
        match outcome {
            Ok(()) => {
                backoff = MIN_BACKOFF;
                if wake.changed().await.is_err() {
                    return;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "store feed relay: reading the change feed failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Reads the feed after the ring's tail until a read comes back short.
async fn catch_up(store: &Store, relay: &Relay) -> Result<()> {
    loop {
        let tail = match relay.tail()? {
            Some(t) => t,
            None => {
                let now = store.current_revision().await?;
                relay.place(now)?;
                now
            }
        };
        match store.read_feed_marked(tail, READ_BATCH).await {
            Ok((feed, compacted)) => {
                let complete = feed.entries.len() < READ_BATCH as usize;
                relay.append(feed.entries, feed.revision, compacted, complete)?;
                if complete {
                    return Ok(());
                }
            }
            // The relay itself fell behind the compaction mark (it could not read
            // for longer than the retention): start again from now; followers
            // behind that read the database and get OutOfRange there.
            Err(Error::OutOfRange(m)) => {
                tracing::warn!(reason = %m, "store feed relay fell behind compaction: starting again at the current revision");
                relay.reset()?;
            }
            Err(e) => return Err(e),
        }
    }
}

/// One step of a [`Follower`].
#[derive(Debug, Clone, Default)]
pub struct FollowBatch {
    /// Feed entries after the previous cursor, ascending by revision.
    pub entries: Vec<Arc<FeedEntry>>,
    /// Everything up to this revision has now been handed to the follower (the
    /// new cursor): at least the last entry's revision, and more when the feed
    /// is known to hold nothing else up to it.
    pub through: i64,
}

/// A cursor on the change feed served by the store's relay (see
/// [`crate::Store::follow`]).
pub struct Follower {
    store: Store,
    relay: Arc<Relay>,
    through: watch::Receiver<i64>,
    cursor: i64,
}

impl std::fmt::Debug for Follower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Follower")
            .field("cursor", &self.cursor)
            .finish_non_exhaustive()
    }
}

impl Follower {
    pub(crate) fn new(store: Store, relay: Arc<Relay>, after: i64) -> Follower {
        Follower {
            store,
            through: relay.through.subscribe(),
            relay,
            cursor: after,
        }
    }

    /// Everything up to this revision has been handed out.
    pub fn cursor(&self) -> i64 {
        self.cursor
    }

    /// The next entries after the cursor (at most `limit`, at least 1), ascending,
    /// and moves the cursor to the batch's `through`. Does not wait for new
    /// changes: an empty batch whose `through` is the old cursor means nothing
    /// newer is known yet (wait with [`Follower::changed`]). From the relay's
    /// ring; from the database when the cursor is older than the ring (a cursor
    /// behind the compaction mark: `OutOfRange`, relist).
    pub async fn next(&mut self, limit: usize) -> Result<FollowBatch> {
        let limit = limit.max(1);
        loop {
            match self.relay.serve(self.cursor, limit)? {
                Served::Batch(b) => {
                    self.cursor = self.cursor.max(b.through);
                    return Ok(b);
                }
                // Only at start-up, for a moment: waiting for the relay's first
                // read saves every follower started with it a read of its own.
                // After a reset (the relay fell behind compaction) the ring is
                // placed again at once; until then, read the database.
                Served::NotReady if *self.through.borrow() >= 0 => break,
                Served::NotReady => {
                    if self.through.wait_for(|t| *t >= 0).await.is_err() {
                        return Err(Error::Unavailable(
                            "store unavailable: the feed relay stopped".into(),
                        ));
                    }
                }
                Served::Behind => break,
            }
        }
        let feed = self
            .store
            .read_feed(self.cursor, i64::try_from(limit).unwrap_or(i64::MAX))
            .await?;
        let last = feed.entries.last().map(FeedEntry::revision);
        let through = if feed.entries.len() >= limit {
            last.unwrap_or(self.cursor)
        } else {
            // A short read covers everything up to its snapshot's counter.
            last.unwrap_or(self.cursor).max(feed.revision)
        };
        self.cursor = self.cursor.max(through);
        Ok(FollowBatch {
            entries: feed.entries.into_iter().map(Arc::new).collect(),
            through: self.cursor,
        })
    }

    /// Resolves once the relay holds something after the cursor; `false` when
    /// the store is gone.
    pub async fn changed(&mut self) -> bool {
        let cursor = self.cursor;
        self.through.wait_for(|t| *t > cursor).await.is_ok()
    }
}
