//! What the agent holds, shared with every stream: the trust bundle and one slot
//! per configured workload, published through a `watch` channel so that every
//! open stream wakes on a rotation, a bundle change or a pod's removal.

use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::watch;
use zeroize::Zeroizing;

use super::config::Workload;
use super::selector::Peer;

/// An X.509-SVID with its private key (kept in memory only).
pub struct Svid {
    pub spiffe_id: String,
    /// `namespace/pod`: unique per entry, the Workload API's `hint`.
    pub hint: String,
    pub pod_uid: String,
    /// Leaf first, then intermediates (DER).
    pub chain_der: Vec<Vec<u8>>,
    /// The same as PEM.
    pub chain_pem: String,
    pub key_pkcs8_der: Zeroizing<Vec<u8>>,
    pub key_pem: Zeroizing<String>,
    pub not_after: SystemTime,
    pub serial: String,
}

impl std::fmt::Debug for Svid {
    // Never the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Svid")
            .field("spiffe_id", &self.spiffe_id)
            .field("hint", &self.hint)
            .field("serial", &self.serial)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// The trust domain's bundle as the agent last fetched it.
#[derive(Debug, PartialEq, Eq)]
pub struct Bundle {
    /// e.g. `example.org`.
    pub trust_domain: String,
    /// Root certificates (DER).
    pub roots_der: Vec<Vec<u8>>,
    pub roots_pem: String,
    /// `{"keys": [...]}`: the `use: jwt-svid` keys only.
    pub jwks: Vec<u8>,
    pub sequence: u64,
}

impl Bundle {
    /// `spiffe://<trust domain>`: the key of bundle maps, and an SDS name.
    pub fn id(&self) -> String {
        format!("spiffe://{}", self.trust_domain)
    }

    pub fn roots_concatenated(&self) -> Vec<u8> {
        self.roots_der.concat()
    }
}

/// One workload's identity.
#[derive(Debug, Clone, Default)]
pub enum Slot {
    /// Not issued yet (or the pod is being looked up).
    #[default]
    Pending,
    Ready(Arc<Svid>),
    /// The pod does not exist (deleted, or bound elsewhere): no identity.
    Gone,
}

/// Everything streams see.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub bundle: Option<Arc<Bundle>>,
    pub slots: Vec<Slot>,
}

/// What one caller is entitled to right now.
#[derive(Debug)]
pub enum View {
    /// Nothing to answer yet: wait for a change.
    Pending,
    /// Every entry of the caller has lost its pod: end the stream.
    Gone,
    Ready {
        svids: Vec<Arc<Svid>>,
        bundle: Arc<Bundle>,
    },
}

impl Snapshot {
    /// The caller's SVIDs (entries `idx`, in order) and the bundle. Ready as soon as
    /// one SVID and the bundle are; gone when every entry is gone.
    pub fn view(&self, idx: &[usize]) -> View {
        let slots: Vec<&Slot> = idx.iter().filter_map(|i| self.slots.get(*i)).collect();
        if !slots.is_empty() && slots.iter().all(|s| matches!(s, Slot::Gone)) {
            return View::Gone;
        }
        let svids: Vec<Arc<Svid>> = slots
            .iter()
            .filter_map(|s| match s {
                Slot::Ready(s) => Some(s.clone()),
                _ => None,
            })
            .collect();
        match (&self.bundle, svids.is_empty()) {
            (Some(b), false) => View::Ready {
                svids,
                bundle: b.clone(),
            },
            _ => View::Pending,
        }
    }

    /// Expiry of the oldest SVID held.
    pub fn oldest_expiry(&self) -> Option<SystemTime> {
        self.slots
            .iter()
            .filter_map(|s| match s {
                Slot::Ready(s) => Some(s.not_after),
                _ => None,
            })
            .min()
    }
}

/// The workloads, the snapshot channel and the caller → entries mapping.
pub struct Shared {
    pub workloads: Vec<Workload>,
    pub tx: watch::Sender<Arc<Snapshot>>,
}

impl Shared {
    pub fn new(workloads: Vec<Workload>) -> Arc<Shared> {
        let slots = vec![Slot::Pending; workloads.len()];
        let (tx, _) = watch::channel(Arc::new(Snapshot {
            bundle: None,
            slots,
        }));
        Arc::new(Shared { workloads, tx })
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.tx.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.tx.subscribe()
    }

    /// The entries `peer` is entitled to.
    pub fn entitled(&self, peer: &Peer) -> Vec<usize> {
        super::selector::entitled(self.workloads.iter().map(|w| w.selectors.as_slice()), peer)
    }

    pub fn set_slot(&self, i: usize, slot: Slot) {
        self.tx.send_modify(|s| {
            let mut next = (**s).clone();
            if let Some(x) = next.slots.get_mut(i) {
                *x = slot;
            }
            *s = Arc::new(next);
        });
    }

    /// Replaces the bundle; `false` (and no wake-up) when it did not change.
    pub fn set_bundle(&self, bundle: Bundle) -> bool {
        self.tx.send_if_modified(|s| {
            if s.bundle.as_deref() == Some(&bundle) {
                return false;
            }
            let mut next = (**s).clone();
            next.bundle = Some(Arc::new(bundle));
            *s = Arc::new(next);
            true
        })
    }
}
