//! Windows security identifiers as plain values: the binary form Windows
//! uses (so two SIDs are equal exactly when `EqualSid` says so), with the
//! `S-1-5-...` text form for display and configuration. Pure Rust, on every
//! OS, so policies can be built and tested anywhere; only reading a
//! process's SID needs Windows (`wharf_transport::process_sid`).

use std::fmt;
use std::str::FromStr;

use crate::error::TransportError;

/// Most sub-authorities a SID can have (`SID_MAX_SUB_AUTHORITIES`).
const MAX_SUB_AUTHORITIES: usize = 15;
/// Bytes of the largest SID (`SECURITY_MAX_SID_SIZE`).
const MAX_LEN: usize = 8 + 4 * MAX_SUB_AUTHORITIES;

/// A Windows security identifier (a user, group or well-known account),
/// held by value in its binary form: `Copy`, comparable, hashable.
///
/// Peer SIDs come from the kernel ([`PeerIdentity::sid`](crate::PeerIdentity::sid),
/// read from the peer process's token at accept or connect time); SIDs
/// given in configuration are parsed from their text form:
///
/// ```
/// use wharf_transport::Sid;
///
/// let system: Sid = "S-1-5-18".parse().unwrap();
/// assert_eq!(system, Sid::LOCAL_SYSTEM);
/// assert_eq!(system.to_string(), "S-1-5-18");
/// assert!("S-1-5-x".parse::<Sid>().is_err());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sid {
    len: u8,
    bytes: [u8; MAX_LEN],
}

impl Sid {
    /// `S-1-5-18`, the LocalSystem account (`NT AUTHORITY\SYSTEM`).
    pub const LOCAL_SYSTEM: Sid = Sid::from_parts(5, &[18]);

    /// A SID from its identifier authority (48 bits) and sub-authorities
    /// (at most 15; more are cut off).
    pub const fn from_parts(authority: u64, sub_authorities: &[u32]) -> Sid {
        let count =
            if sub_authorities.len() > MAX_SUB_AUTHORITIES { MAX_SUB_AUTHORITIES } else { sub_authorities.len() };
        let mut bytes = [0u8; MAX_LEN];
        bytes[0] = 1; // SID_REVISION
        bytes[1] = count as u8;
        let authority = authority.to_be_bytes();
        let mut i = 0;
        while i < 6 {
            bytes[2 + i] = authority[2 + i];
            i += 1;
        }
        let mut k = 0;
        while k < count {
            let sub = sub_authorities[k].to_le_bytes();
            let mut j = 0;
            while j < 4 {
                bytes[8 + 4 * k + j] = sub[j];
                j += 1;
            }
            k += 1;
        }
        Sid { len: (8 + 4 * count) as u8, bytes }
    }

    /// A SID from its binary form (as in a `TOKEN_USER`): revision 1, a
    /// sub-authority count of at most 15, and exactly the bytes that count
    /// calls for. `None` for anything else.
    pub fn from_bytes(bytes: &[u8]) -> Option<Sid> {
        let (&revision, &count) = (bytes.first()?, bytes.get(1)?);
        let len = 8 + 4 * usize::from(count);
        if revision != 1 || usize::from(count) > MAX_SUB_AUTHORITIES || bytes.len() != len {
            return None;
        }
        let mut sid = Sid { len: len as u8, bytes: [0; MAX_LEN] };
        sid.bytes[..len].copy_from_slice(bytes);
        Some(sid)
    }

    /// The binary form (what `EqualSid` compares).
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    /// The identifier authority (5 for `NT AUTHORITY`).
    pub fn authority(&self) -> u64 {
        let mut a = [0u8; 8];
        a[2..].copy_from_slice(&self.bytes[2..8]);
        u64::from_be_bytes(a)
    }

    /// The sub-authorities, in order (the last is the RID of a user SID).
    pub fn sub_authorities(&self) -> impl Iterator<Item = u32> + '_ {
        self.as_bytes()[8..].chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
    }
}

impl fmt::Display for Sid {
    /// The text form, as `ConvertSidToStringSidW` writes it: `S-1-5-18`
    /// (an authority of 2^32 or more in hexadecimal, `0x` and 12 digits).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let authority = self.authority();
        if authority >> 32 == 0 {
            write!(f, "S-1-{authority}")?;
        } else {
            write!(f, "S-1-0x{authority:012X}")?;
        }
        for sub in self.sub_authorities() {
            write!(f, "-{sub}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Sid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sid({self})")
    }
}

impl FromStr for Sid {
    type Err = TransportError;

    /// Parses `S-1-<authority>-<sub>...` (decimal, or a `0x` hexadecimal
    /// authority; at most 15 sub-authorities). Anything else is
    /// [`TransportError::InvalidName`] quoting the input.
    fn from_str(s: &str) -> Result<Sid, TransportError> {
        let invalid = |reason| TransportError::InvalidName { input: s.to_string(), reason };
        let rest = s
            .strip_prefix("S-1-")
            .or_else(|| s.strip_prefix("s-1-"))
            .ok_or_else(|| invalid("a SID starts with S-1-"))?;
        let mut parts = rest.split('-');
        let authority = parts.next().unwrap_or_default();
        let authority = match authority.strip_prefix("0x").or_else(|| authority.strip_prefix("0X")) {
            Some(hex) => u64::from_str_radix(hex, 16),
            None => authority.parse::<u64>(),
        }
        .ok()
        .filter(|a| *a < 1 << 48)
        .ok_or_else(|| invalid("the identifier authority is not a 48-bit number"))?;
        let mut subs = Vec::new();
        for part in parts {
            if subs.len() == MAX_SUB_AUTHORITIES {
                return Err(invalid("a SID has at most 15 sub-authorities"));
            }
            subs.push(part.parse::<u32>().map_err(|_| invalid("a sub-authority is not a 32-bit number"))?);
        }
        Ok(Sid::from_parts(authority, &subs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_binary_forms_round_trip() {
        for text in [
            "S-1-5-18",
            "S-1-5-21-1004336348-1177238915-682003330-512",
            "S-1-0x010000000000-1",
            "S-1-4294967295-7",
            "S-1-0",
        ] {
            let sid: Sid = text.parse().unwrap();
            assert_eq!(sid.to_string(), text);
            assert_eq!(Sid::from_bytes(sid.as_bytes()), Some(sid));
        }
        // The binary layout Windows uses: revision, count, big-endian
        // authority, little-endian sub-authorities.
        assert_eq!(Sid::LOCAL_SYSTEM.as_bytes(), &[1, 1, 0, 0, 0, 0, 0, 5, 18, 0, 0, 0]);
        assert_eq!("s-1-5-18".parse::<Sid>().unwrap(), Sid::LOCAL_SYSTEM);
    }

    #[test]
    fn malformed_sids_are_refused() {
        for bad in ["", "S-1", "S-2-5-18", "S-1-5-x", "S-1-5--1", "S-1-281474976710656-1", "S-1-5-4294967296"] {
            assert!(bad.parse::<Sid>().is_err(), "{bad:?} parsed");
        }
        let sixteen = format!("S-1-5{}", "-1".repeat(16));
        assert!(sixteen.parse::<Sid>().is_err());
        assert!(Sid::from_bytes(&[1, 1, 0, 0, 0, 0, 0, 5]).is_none(), "count says one sub-authority");
        assert!(Sid::from_bytes(&[2, 0, 0, 0, 0, 0, 0, 5]).is_none(), "revision 2");
        assert!(Sid::from_bytes(&[]).is_none());
    }
}
