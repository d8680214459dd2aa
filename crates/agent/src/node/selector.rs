//! Workload attestation: the caller's Unix peer credentials (`SO_PEERCRED`, read
//! by tokio's `UnixStream::peer_cred()` when the connection is accepted) matched
//! against each configured workload's selectors.
//!
//! Selectors are SPIRE's `unix` attestor names: `unix:uid:<n>`, `unix:gid:<n>`
//! (the peer's primary gid, as `SO_PEERCRED` reports it), `unix:pid:<n>` and
//! `unix:supplementary_gid:<n>` (one of the caller's supplementary groups). An
//! entry matches when **every** one of its selectors matches the caller (an entry
//! with none is refused when the configuration is loaded: it would match everyone).
//!
//! # Supplementary groups, and the pid-reuse race
//!
//! `SO_PEERCRED` gives uid, gid and pid but not the supplementary groups: those are
//! read from `/proc/<pid>/status` ("Groups:") **when the connection is accepted**
//! ([`read_groups`]), and kept with the connection. Between the caller's
//! `connect()` and that read the caller may have exited and its pid been reused by
//! another process, whose groups would then be read. The window is kept as short as
//! it can be (the read happens in the accept loop, before the connection is served,
//! while the caller's end is still open), and the read is checked: the process found
//! must have the effective uid and gid `SO_PEERCRED` reported, or nothing is taken
//! from it. Whatever cannot be read or checked (no pid, no such process, another
//! pid namespace, a changed uid) gives **no** supplementary groups: the caller then
//! matches no `unix:supplementary_gid` selector (fail closed), while uid/gid/pid
//! selectors still apply. The groups are those at accept time; a later `setgroups`
//! by the caller is not seen until it reconnects. The agent must see the callers'
//! `/proc` (the host's pid namespace) for pid and supplementary-gid selectors.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// One selector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Selector {
    Uid(u32),
    Gid(u32),
    Pid(i32),
    SupplementaryGid(u32),
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Selector::Uid(n) => write!(f, "unix:uid:{n}"),
            Selector::Gid(n) => write!(f, "unix:gid:{n}"),
            Selector::Pid(n) => write!(f, "unix:pid:{n}"),
            Selector::SupplementaryGid(n) => write!(f, "unix:supplementary_gid:{n}"),
        }
    }
}

impl FromStr for Selector {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |why: &str| {
            format!(
                "{s:?}: {why} (expected unix:uid:<n>, unix:gid:<n>, unix:pid:<n> or unix:supplementary_gid:<n>)"
            )
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
            "supplementary_gid" => Ok(Selector::SupplementaryGid(number(value)?)),
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    /// Not every platform reports it.
    pub pid: Option<i32>,
    /// Supplementary groups read at accept time ([`read_groups`]); `None` when
    /// they could not be read and checked, which matches no selector.
    pub groups: Option<Arc<[u32]>>,
}

impl Peer {
    /// Whether `selector` describes this caller.
    pub fn has(&self, selector: &Selector) -> bool {
        match selector {
            Selector::Uid(u) => self.uid == *u,
            Selector::Gid(g) => self.gid == *g,
            Selector::Pid(p) => self.pid == Some(*p),
            Selector::SupplementaryGid(g) => {
                self.groups.as_deref().is_some_and(|gs| gs.contains(g))
            }
        }
    }
}

/// The supplementary groups in the text of `/proc/<pid>/status`, if the process
/// it describes has effective uid `uid` and gid `gid` (what `SO_PEERCRED` reported
/// for the connection); `None` otherwise or if the text is not as expected.
pub fn groups_from_status(status: &str, uid: u32, gid: u32) -> Option<Vec<u32>> {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
    };
    let numbers = |v: &str| -> Option<Vec<u32>> {
        v.split_whitespace()
            .map(|n| n.parse::<u32>().ok())
            .collect()
    };
    // "Uid:\treal\teffective\tsaved\tfs": SO_PEERCRED reports the effective ids.
    let effective = |name: &str| numbers(field(name)?)?.get(1).copied();
    // Another process behind a reused pid (or a changed identity): trust nothing.
    if effective("Uid")? != uid || effective("Gid")? != gid {
        return None;
    }
    numbers(field("Groups")?)
}

/// Reads the supplementary groups of the connected process `pid` now (see the
/// module's notes on the pid-reuse race): `None` when unreadable or unchecked.
pub fn read_groups(pid: Option<i32>, uid: u32, gid: u32) -> Option<Arc<[u32]>> {
    let pid = pid.filter(|p| *p > 0)?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    groups_from_status(&status, uid, gid).map(Arc::from)
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
        assert_eq!(
            sel("unix:supplementary_gid:27"),
            Selector::SupplementaryGid(27)
        );
        assert_eq!(
            sel("unix:supplementary_gid:27").to_string(),
            "unix:supplementary_gid:27"
        );
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
            "unix:supplementary_gid:",
            "unix:supplementary_gid:-3",
            "unix:supplementary_gids:3",
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
            groups: Some(Arc::from([27, 44])),
        };
        assert!(matches(&[Selector::Uid(1000)], &peer));
        assert!(matches(&[Selector::Uid(1000), Selector::Gid(100)], &peer));
        assert!(matches(&[Selector::Pid(4242)], &peer));
        assert!(!matches(&[Selector::Uid(1001)], &peer));
        assert!(!matches(&[Selector::Uid(1000), Selector::Gid(101)], &peer));
        assert!(!matches(&[], &peer), "no selectors matches nobody");
        assert!(matches(&[Selector::SupplementaryGid(44)], &peer));
        assert!(matches(
            &[Selector::Uid(1000), Selector::SupplementaryGid(27)],
            &peer
        ));
        assert!(!matches(&[Selector::SupplementaryGid(100)], &peer));
        let unread = Peer {
            groups: None,
            ..peer.clone()
        };
        assert!(
            !matches(&[Selector::SupplementaryGid(27)], &unread),
            "unreadable groups match no supplementary_gid selector"
        );
        let no_pid = Peer { pid: None, ..peer };
        assert!(!matches(&[Selector::Pid(4242)], &no_pid));
        assert!(matches(&[Selector::Uid(1000)], &no_pid));
    }

    const STATUS: &str = "Name:\tcat\nUmask:\t0022\nState:\tR (running)\nTgid:\t4242\nPid:\t4242\nPPid:\t1\nUid:\t1000\t1001\t1001\t1001\nGid:\t100\t101\t101\t101\nFDSize:\t64\nGroups:\t27 44 1001 \nNStgid:\t4242\n";

    #[test]
    fn groups_are_read_from_proc_status_of_the_same_identity() {
        assert_eq!(
            groups_from_status(STATUS, 1001, 101),
            Some(vec![27, 44, 1001])
        );
        // SO_PEERCRED reports effective ids: the real ones do not vouch for the process.
        assert_eq!(groups_from_status(STATUS, 1000, 100), None);
        // Another identity behind the pid (reused): nothing is taken from it.
        assert_eq!(groups_from_status(STATUS, 0, 101), None);
        assert_eq!(groups_from_status(STATUS, 1001, 0), None);
        // No supplementary groups: an empty list, which matches no selector.
        let none = STATUS.replace("Groups:\t27 44 1001 \n", "Groups:\t\n");
        assert_eq!(groups_from_status(&none, 1001, 101), Some(vec![]));
        // Malformed or missing fields: unknown.
        for broken in [
            STATUS.replace("Groups:\t27 44 1001 \n", ""),
            STATUS.replace("27 44", "27 x"),
            STATUS.replace("Uid:\t1000\t1001\t1001\t1001", "Uid:\t1000"),
            String::new(),
        ] {
            assert_eq!(groups_from_status(&broken, 1001, 101), None, "{broken}");
        }
        // "Groups" must be the whole field name.
        let prefixed = STATUS.replace("Groups:", "XGroups:");
        assert_eq!(groups_from_status(&prefixed, 1001, 101), None);
    }

    #[test]
    fn this_process_groups_are_read() {
        use std::os::unix::fs::MetadataExt as _;
        let me = std::fs::metadata("/proc/self").expect("proc");
        let status = std::fs::read_to_string("/proc/self/status").expect("status");
        let (uid, gid) = (me.uid(), me.gid());
        let pid = i32::try_from(std::process::id()).expect("pid");
        let read = read_groups(Some(pid), uid, gid);
        assert_eq!(
            read.as_deref().map(<[u32]>::to_vec),
            groups_from_status(&status, uid, gid)
        );
        assert!(read.is_some(), "{status}");
        assert_eq!(read_groups(None, uid, gid), None);
        assert_eq!(
            read_groups(Some(i32::MAX), uid, gid),
            None,
            "no such process"
        );
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
            groups: None,
        };
        assert_eq!(entitled(entries.iter().map(Vec::as_slice), &peer), [1, 2]);
        let root = Peer {
            uid: 0,
            gid: 0,
            pid: None,
            groups: None,
        };
        assert!(entitled(entries.iter().map(Vec::as_slice), &root).is_empty());
    }
}
