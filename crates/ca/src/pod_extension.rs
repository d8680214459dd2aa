//! Badge's pod-binding certificate extension.
//!
//! ```text
//! id-badge                 OBJECT IDENTIFIER ::= { 2 25 2310844054200458026 }
//! id-badge-pod-binding     OBJECT IDENTIFIER ::= { id-badge 1 }
//!
//! BadgePodBinding ::= SEQUENCE {
//!     podName  UTF8String,   -- metadata.name of the pod the certificate was issued to
//!     podUID   UTF8String    -- metadata.uid of that pod
//! }
//! ```
//!
//! Non-critical: relying parties that do not know it must still accept the certificate
//! (it only adds a check), and the namespace is already in the SPIFFE ID. A relying party
//! that knows it can ask Badge whether that pod (name *and* uid, so a re-created pod with
//! the same name does not count) still exists, and refuse a certificate whose pod is gone.
//!
//! The arc is under `2.25` (ITU-T X.667, OIDs from UUIDs, needing no registration), with
//! a random 63-bit value instead of a full 128-bit UUID because rcgen encodes OID
//! components as `u64`. It is Badge's arc from now on; new Badge extensions take the next
//! numbers under it.
//!
//! Encoding and decoding are written out here (a dozen lines of DER) rather than pulling
//! in an ASN.1 crate.

use badge_core::spiffe::plan::PodBinding;

/// `id-badge`.
pub const BADGE_OID_ARC: [u64; 3] = [2, 25, 2_310_844_054_200_458_026];
/// `id-badge-pod-binding`, as components.
pub const POD_BINDING_OID: [u64; 4] = [2, 25, 2_310_844_054_200_458_026, 1];
/// The same in dotted form.
pub const POD_BINDING_OID_STR: &str = "2.25.2310844054200458026.1";

const TAG_SEQUENCE: u8 = 0x30;
const TAG_UTF8STRING: u8 = 0x0c;

fn push_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|&&b| b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
}

fn push_tlv(out: &mut Vec<u8>, tag: u8, value: &[u8]) {
    out.push(tag);
    push_len(out, value.len());
    out.extend_from_slice(value);
}

/// DER of `BadgePodBinding`.
pub fn encode(pod: &PodBinding) -> Vec<u8> {
    let mut inner = Vec::with_capacity(pod.name.len() + pod.uid.len() + 8);
    push_tlv(&mut inner, TAG_UTF8STRING, pod.name.as_bytes());
    push_tlv(&mut inner, TAG_UTF8STRING, pod.uid.as_bytes());
    let mut out = Vec::with_capacity(inner.len() + 4);
    push_tlv(&mut out, TAG_SEQUENCE, &inner);
    out
}

/// Reads one DER TLV with tag `tag` from the front of `input`: (value, rest).
fn take_tlv(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&t, rest) = input.split_first()?;
    if t != tag {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        // DER: long form only for lengths ≥ 128, minimal, and at most 4 bytes here.
        if n == 0 || n > 4 || rest.len() < n || rest.first() == Some(&0) {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        if len < 0x80 {
            return None;
        }
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some(rest.split_at(len))
}

/// Parses `BadgePodBinding` (strict DER; `None` if malformed), for relying parties.
pub fn decode(der: &[u8]) -> Option<PodBinding> {
    let (seq, rest) = take_tlv(der, TAG_SEQUENCE)?;
    if !rest.is_empty() {
        return None;
    }
    let (name, seq) = take_tlv(seq, TAG_UTF8STRING)?;
    let (uid, seq) = take_tlv(seq, TAG_UTF8STRING)?;
    if !seq.is_empty() {
        return None;
    }
    Some(PodBinding {
        name: String::from_utf8(name.to_vec()).ok()?,
        uid: String::from_utf8(uid.to_vec()).ok()?,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_exact_bytes() {
        let pod = PodBinding {
            name: "web".into(),
            uid: "u1".into(),
        };
        let der = encode(&pod);
        assert_eq!(
            der,
            [0x30, 9, 0x0c, 3, b'w', b'e', b'b', 0x0c, 2, b'u', b'1']
        );
        assert_eq!(decode(&der), Some(pod));
        // Long names use the long length form.
        let long = PodBinding {
            name: "n".repeat(253),
            uid: "u".repeat(128),
        };
        let der = encode(&long);
        assert_eq!(&der[..4], &[0x30, 0x82, 0x01, 0x83]);
        assert_eq!(decode(&der), Some(long));
    }

    #[test]
    fn rejects_malformed() {
        let cases: &[&[u8]] = &[
            &[],
            &[0x31, 0],
            &[0x30, 0],
            &[0x30, 2, 0x0c, 0],
            &[0x30, 4, 0x0c, 0, 0x04, 0],
            &[0x30, 4, 0x0c, 0, 0x0c, 0, 0],
            &[0x30, 4, 0x0c, 0, 0x0c, 0, 0x0c],
            &[0x30, 0x81, 4, 0x0c, 0, 0x0c, 0],
            &[0x30, 5, 0x0c, 0, 0x0c, 1, 0xff],
        ];
        for c in cases {
            assert_eq!(decode(c), None, "{c:?}");
        }
    }
}
