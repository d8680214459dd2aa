//! Workload attestation: the caller's Unix peer credentials (`SO_PEERCRED`, read
//! by tokio's `UnixStream::peer_cred()` when the connection is accepted) matched
//! against each configured workload's selectors.
//!
//! Selectors are SPIRE's `unix` attestor names: `unix:uid:<n>`, `unix:gid:<n>`
//! (the peer's primary gid, as `SO_PEERCRED` reports it), `unix:pid:<n>`. An entry
//! matches when **every** one of its selectors matches the caller (an entry with
//! none is refused when the configuration is loaded: it would match everyone).

use std::fmt;
use std::str::FromStr;

/// One selector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Selector {
    Uid(u32),
    Gid(u32),
    Pid(i32),
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Selector::Uid(n) => write!(f, "unix:uid:{n}"),
            Selector::Gid(n) => write!(f, "unix:gid:{n}"),
            Selector::Pid(n) => write!(f, "unix:pid:{n}"),
        }
    }
}

impl FromStr for Selector {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |why: &str| {
            format!("{s:?}: {why} (expected unix:uid:<n>, unix:gid:<n> or unix:pid:<n>)")
        };
        let mut parts = s.splitn(3, ':');
        let (Some(kind), Some(key), Some(value)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(bad("not a selector"));
        };
        if kind != "unix" {
            return Err(bad(&format!("unknown selector type {kind:?}")));
        }
        let number = |v: &str| -> Result<u32, String> {
            if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad("the value must be a decimal number"));
            }
            v.parse::<u32>()
                .map_err(|_| bad("the value is out of range"))
        };
        match key {
            "uid" => Ok(Selector::Uid(number(value)?)),
            "gid" => Ok(Selector::Gid(number(value)?)),
            "pid" => {
                let n = number(value)?;
                i32::try_from(n)
                    .ok()
                    .filter(|p| *p > 0)
                    .map(Selector::Pid)
                    .ok_or_else(|| bad("a pid is between 1 and 2^31-1"))
            }
            other => Err(bad(&format!("unknown unix selector {other:?}"))),
        }
    }
}

/// Who is calling, as the kernel reports it for the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    /// Not every platform reports it.
    pub pid: Option<i32>,
}

impl Peer {
    /// Whether `selector` describes this caller.
    pub fn has(&self, selector: &Selector) -> bool {
        match selector {
            Selector::Uid(u) => self.uid == *u,
            Selector::Gid(g) => self.gid == *g,
            Selector::Pid(p) => self.pid == Some(*p),
        }
    }
}

/// Whether an entry with `selectors` matches `peer`: all of them must (none: never).
pub fn matches(selectors: &[Selector], peer: &Peer) -> bool {
    !selectors.is_empty() && selectors.iter().all(|s| peer.has(s))
}

/// The indices of the entries that match `peer`, in configuration order (the first
/// is the caller's default identity).
pub fn entitled<'a, I>(entries: I, peer: &Peer) -> Vec<usize>
where
    I: IntoIterator<Item = &'a [Selector]>,
{
    entries
        .into_iter()
        .enumerate()
        .filter(|(_, s)| matches(s, peer))
        .map(|(i, _)| i)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel(s: &str) -> Selector {
        s.parse().expect("selector")
    }

    #[test]
    fn parsing() {
        assert_eq!(sel("unix:uid:1000"), Selector::Uid(1000));
        assert_eq!(sel("unix:gid:0"), Selector::Gid(0));
        assert_eq!(sel("unix:pid:42"), Selector::Pid(42));
        assert_eq!(sel("unix:uid:1000").to_string(), "unix:uid:1000");
        for bad in [
            "",
            "unix",
            "unix:uid",
            "unix:uid:",
            "unix:uid:-1",
            "unix:uid:+1",
            "unix:uid:1x",
            "unix:uid:99999999999",
            "unix:user:alice",
            "k8s:ns:default",
            "unix:pid:0",
            "unix:pid:4294967295",
        ] {
            let e = bad.parse::<Selector>().expect_err(bad);
            assert!(e.contains("expected unix:uid:<n>"), "{bad}: {e}");
        }
    }

    #[test]
    fn matching_requires_every_selector() {
        let peer = Peer {
            uid: 1000,
            gid: 100,
            pid: Some(4242),
        };
        assert!(matches(&[Selector::Uid(1000)], &peer));
        assert!(matches(&[Selector::Uid(1000), Selector::Gid(100)], &peer));
        assert!(matches(&[Selector::Pid(4242)], &peer));
        assert!(!matches(&[Selector::Uid(1001)], &peer));
        assert!(!matches(&[Selector::Uid(1000), Selector::Gid(101)], &peer));
        assert!(!matches(&[], &peer), "no selectors matches nobody");
        let no_pid = Peer { pid: None, ..peer };
        assert!(!matches(&[Selector::Pid(4242)], &no_pid));
        assert!(matches(&[Selector::Uid(1000)], &no_pid));
    }

    #[test]
    fn entitlement_keeps_configuration_order() {
        let entries = [
            vec![Selector::Uid(1)],
            vec![Selector::Uid(1000)],
            vec![Selector::Gid(100)],
            vec![Selector::Uid(1000), Selector::Pid(7)],
        ];
        let peer = Peer {
            uid: 1000,
            gid: 100,
            pid: Some(8),
        };
        assert_eq!(entitled(entries.iter().map(Vec::as_slice), &peer), [1, 2]);
        let root = Peer {
            uid: 0,
            gid: 0,
            pid: None,
        };
        assert!(entitled(entries.iter().map(Vec::as_slice), &root).is_empty());
    }
}
