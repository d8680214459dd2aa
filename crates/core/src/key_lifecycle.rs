//! Signing-key lifecycle as a pure function of the keys' timestamps and `now`, so
//! every replica derives the same states from the same stored keys without
//! coordinating: generated → **published** (in JWKS, not signing) → **active** once
//! `activates_at` passes → **retired** when a newer key activates (still in JWKS)
//! → **removed** once every token it could have signed has expired.

use std::time::{Duration, SystemTime};

/// What the lifecycle needs to know of one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyTimes {
    pub kid: String,
    pub created_at: SystemTime,
    pub activates_at: SystemTime,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    Published,
    Active,
    Retired,
}

/// One key's derived state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyStatus {
    pub kid: String,
    pub state: KeyState,
    /// When a successor activated (retired keys only).
    pub retired_at: Option<SystemTime>,
    /// When it may leave JWKS (retired keys only).
    pub remove_after: Option<SystemTime>,
}

/// Lifecycle settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// A new key is generated this long after the active one activated.
    pub rotation_period: Duration,
    /// A new key is published this long before it signs, so verifiers that cache
    /// JWKS learn it first.
    pub propagation_delay: Duration,
    /// The longest lifetime a token signed by a key can have: a retired key stays
    /// published this long after it stopped signing.
    pub max_token_lifetime: Duration,
}

fn order(keys: &[KeyTimes]) -> Vec<&KeyTimes> {
    let mut v: Vec<&KeyTimes> = keys.iter().collect();
    v.sort_by(|a, b| {
        (a.activates_at, a.created_at, &a.kid).cmp(&(b.activates_at, b.created_at, &b.kid))
    });
    v
}

/// The state of every key at `now`, oldest activation first. Exactly one key is
/// active whenever any key has reached its activation time: the most recent one.
pub fn states(keys: &[KeyTimes], policy: &Policy, now: SystemTime) -> Vec<KeyStatus> {
    let ordered = order(keys);
    let activated: Vec<&KeyTimes> = ordered
        .iter()
        .copied()
        .filter(|k| k.activates_at <= now)
        .collect();
    ordered
        .iter()
        .map(|k| {
            if k.activates_at > now {
                return KeyStatus {
                    kid: k.kid.clone(),
                    state: KeyState::Published,
                    retired_at: None,
                    remove_after: None,
                };
            }
            let pos = activated.iter().position(|a| a.kid == k.kid);
            let successor = pos.and_then(|p| activated.get(p + 1));
            match successor {
                None => KeyStatus {
                    kid: k.kid.clone(),
                    state: KeyState::Active,
                    retired_at: None,
                    remove_after: None,
                },
                Some(next) => KeyStatus {
                    kid: k.kid.clone(),
                    state: KeyState::Retired,
                    retired_at: Some(next.activates_at),
                    remove_after: next.activates_at.checked_add(policy.max_token_lifetime),
                },
            }
        })
        .collect()
}

/// The kid that signs at `now`, if any.
pub fn active(keys: &[KeyTimes], now: SystemTime) -> Option<&str> {
    order(keys)
        .into_iter()
        .rev()
        .find(|k| k.activates_at <= now)
        .map(|k| k.kid.as_str())
}

/// What the rotating replica should do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Generate a key that activates at this time (None: no new key needed).
    pub generate_activating_at: Option<SystemTime>,
    /// Keys whose tokens have all expired: delete them.
    pub remove: Vec<String>,
}

/// Decides rotation and removal. The first key ever activates at once (nothing can
/// hold a token yet); later keys wait `propagation_delay`. No new key is made while
/// one is still waiting to activate.
pub fn plan(keys: &[KeyTimes], policy: &Policy, now: SystemTime) -> Plan {
    let st = states(keys, policy, now);
    let pending = st.iter().any(|s| s.state == KeyState::Published);
    let active_since = order(keys)
        .into_iter()
        .rev()
        .find(|k| k.activates_at <= now)
        .map(|k| k.activates_at);
    let generate_activating_at = match (pending, active_since) {
        (true, _) => None,
        (false, None) => Some(now),
        (false, Some(since)) => match since.checked_add(policy.rotation_period) {
            Some(due) if due <= now => Some(now + policy.propagation_delay),
            _ => None,
        },
    };
    let remove = st
        .iter()
        .filter(|s| s.state == KeyState::Retired && s.remove_after.is_some_and(|t| t <= now))
        .map(|s| s.kid.clone())
        .collect();
    Plan {
        generate_activating_at,
        remove,
    }
}

/// A forced rotation (`KeyService.RotateKeys`): the new key activates after the
/// propagation delay, or at once when nothing signs yet.
pub fn forced_activation(keys: &[KeyTimes], policy: &Policy, now: SystemTime) -> SystemTime {
    if active(keys, now).is_none() {
        now
    } else {
        now + policy.propagation_delay
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const T0: u64 = 1_700_000_000;

    fn at(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(T0 + s)
    }

    fn key(kid: &str, created: u64, activates: u64) -> KeyTimes {
        KeyTimes {
            kid: kid.into(),
            created_at: at(created),
            activates_at: at(activates),
        }
    }

    fn policy() -> Policy {
        Policy {
            rotation_period: Duration::from_secs(1000),
            propagation_delay: Duration::from_secs(60),
            max_token_lifetime: Duration::from_secs(3600),
        }
    }

    fn state_of(keys: &[KeyTimes], now: u64) -> Vec<(String, KeyState)> {
        states(keys, &policy(), at(now))
            .into_iter()
            .map(|s| (s.kid, s.state))
            .collect()
    }

    #[test]
    fn first_key_activates_at_once() {
        let p = plan(&[], &policy(), at(0));
        assert_eq!(p.generate_activating_at, Some(at(0)));
        assert!(p.remove.is_empty());
    }

    #[test]
    fn published_then_active_then_retired() {
        let keys = vec![key("a", 0, 0), key("b", 1000, 1060)];
        // Boundary: at activates_at - 1 the new key only publishes.
        assert_eq!(
            state_of(&keys, 1059),
            vec![
                ("a".into(), KeyState::Active),
                ("b".into(), KeyState::Published)
            ]
        );
        // At exactly activates_at it signs and its predecessor retires.
        assert_eq!(
            state_of(&keys, 1060),
            vec![
                ("a".into(), KeyState::Retired),
                ("b".into(), KeyState::Active)
            ]
        );
        assert_eq!(active(&keys, at(1059)), Some("a"));
        assert_eq!(active(&keys, at(1060)), Some("b"));
        let a = &states(&keys, &policy(), at(1060))[0];
        assert_eq!(a.retired_at, Some(at(1060)));
        assert_eq!(a.remove_after, Some(at(1060 + 3600)));
    }

    #[test]
    fn rotation_is_due_after_the_period_and_waits_for_pending_keys() {
        let one = vec![key("a", 0, 0)];
        let cases = [(999, None), (1000, Some(at(1060))), (5000, Some(at(5060)))];
        for (now, want) in cases {
            assert_eq!(
                plan(&one, &policy(), at(now)).generate_activating_at,
                want,
                "now={now}"
            );
        }
        let pending = vec![key("a", 0, 0), key("b", 1000, 1060)];
        assert_eq!(
            plan(&pending, &policy(), at(1030)).generate_activating_at,
            None
        );
    }

    #[test]
    fn retired_keys_are_removed_once_their_tokens_expired() {
        let keys = vec![key("a", 0, 0), key("b", 1000, 1060)];
        assert!(plan(&keys, &policy(), at(1060 + 3599)).remove.is_empty());
        assert_eq!(
            plan(&keys, &policy(), at(1060 + 3600)).remove,
            vec!["a".to_string()]
        );
        // The active key is never removed, however old.
        assert!(
            plan(&keys, &policy(), at(1_000_000))
                .remove
                .iter()
                .all(|k| k != "b")
        );
    }

    #[test]
    fn forced_rotation_waits_for_propagation_unless_nothing_signs() {
        assert_eq!(forced_activation(&[], &policy(), at(5)), at(5));
        let keys = vec![key("a", 0, 0)];
        assert_eq!(forced_activation(&keys, &policy(), at(5)), at(65));
    }
}
