//! The snapshot file: a fixed header, the state encoded with postcard (serde), and a
//! CRC-64 of everything before it.
//!
//! ```text
//! offset  size  field
//!      0     8  magic "FVMSNAP\0"
//!      8     4  format version (little endian)
//!     12     4  architecture (0x8664: x86_64)
//!     16     8  payload length N (little endian)
//!     24     N  payload: postcard(MicrovmState)
//!   24+N     8  CRC-64/XZ of bytes [0, 24+N) (little endian)
//! ```
//!
//! Everything is checked before anything is used: size, magic, version, architecture,
//! checksum, then the payload's decoding.

use serde::{de::DeserializeOwned, Serialize};

/// The magic number.
pub const MAGIC: [u8; 8] = *b"FVMSNAP\0";
/// The format version this ferrovm writes and reads (2: each vCPU's TSC offset and the
/// host TSC with the kvmclock reading).
pub const VERSION: u32 = 2;
/// The architecture tag of x86_64.
pub const ARCH_X86_64: u32 = 0x8664;
/// Header size.
pub const HEADER_LEN: usize = 24;
/// Checksum size.
pub const CRC_LEN: usize = 8;
/// The largest payload accepted (a state is a few hundred KiB; this bounds what a
/// corrupted length can make ferrovm allocate).
pub const MAX_PAYLOAD: u64 = 256 << 20;

const CRC: crc::Crc<u64> = crc::Crc::<u64>::new(&crc::CRC_64_XZ);

/// Why a snapshot file was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormatError {
    /// Shorter than its header or than its header says.
    #[error("the snapshot is truncated: {have} bytes, {need} needed")]
    Truncated {
        /// Bytes present.
        have: u64,
        /// Bytes needed.
        need: u64,
    },
    /// Not a ferrovm snapshot.
    #[error("not a ferrovm snapshot (bad magic number)")]
    BadMagic,
    /// Another format version.
    #[error("snapshot format version {found}; this ferrovm reads version {VERSION}")]
    Version {
        /// The file's version.
        found: u32,
    },
    /// Another architecture.
    #[error("the snapshot is for another architecture (tag {found:#x}); this ferrovm runs x86_64 guests")]
    Arch {
        /// The file's tag.
        found: u32,
    },
    /// An impossible payload length.
    #[error("the snapshot's payload length {0} is impossible (the file is corrupted)")]
    Length(u64),
    /// The checksum does not match.
    #[error("the snapshot is corrupted: checksum {found:#018x}, computed {computed:#018x}")]
    Checksum {
        /// Stored.
        found: u64,
        /// Computed.
        computed: u64,
    },
    /// The payload does not decode.
    #[error("the snapshot's state cannot be decoded: {0}")]
    Decode(String),
    /// The state could not be encoded.
    #[error("cannot encode the state: {0}")]
    Encode(String),
}

/// The file bytes of `state`.
pub fn encode<T: Serialize>(state: &T) -> Result<Vec<u8>, FormatError> {
    let payload = postcard::to_allocvec(state).map_err(|e| FormatError::Encode(e.to_string()))?;
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len() + CRC_LEN);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&ARCH_X86_64.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&payload);
    let crc = CRC.checksum(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    Ok(out)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// The payload of a snapshot file, after every check.
pub fn payload(bytes: &[u8]) -> Result<&[u8], FormatError> {
    let have = bytes.len() as u64;
    if bytes.len() < HEADER_LEN {
        return Err(FormatError::Truncated {
            have,
            need: HEADER_LEN as u64,
        });
    }
    if bytes[..8] != MAGIC {
        return Err(FormatError::BadMagic);
    }
    let version = u32_at(bytes, 8);
    if version != VERSION {
        return Err(FormatError::Version { found: version });
    }
    let arch = u32_at(bytes, 12);
    if arch != ARCH_X86_64 {
        return Err(FormatError::Arch { found: arch });
    }
    let len = u64_at(bytes, 16);
    if len > MAX_PAYLOAD {
        return Err(FormatError::Length(len));
    }
    let need = HEADER_LEN as u64 + len + CRC_LEN as u64;
    if have < need {
        return Err(FormatError::Truncated { have, need });
    }
    if have > need {
        return Err(FormatError::Length(len));
    }
    let body_end = HEADER_LEN + len as usize;
    let found = u64_at(bytes, body_end);
    let computed = CRC.checksum(&bytes[..body_end]);
    if found != computed {
        return Err(FormatError::Checksum { found, computed });
    }
    Ok(&bytes[HEADER_LEN..body_end])
}

/// Decodes a snapshot file.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, FormatError> {
    let p = payload(bytes)?;
    postcard::from_bytes(p).map_err(|e| FormatError::Decode(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct S {
        a: u64,
        b: Vec<u8>,
        c: String,
    }

    fn sample() -> S {
        S {
            a: 42,
            b: (0..200u8).collect(),
            c: "ferrovm".into(),
        }
    }

    #[test]
    fn round_trip() {
        let bytes = encode(&sample()).unwrap();
        assert_eq!(&bytes[..8], b"FVMSNAP\0");
        assert_eq!(decode::<S>(&bytes).unwrap(), sample());
    }

    #[test]
    fn truncation_at_every_length_is_refused() {
        let bytes = encode(&sample()).unwrap();
        for n in 0..bytes.len() {
            let e = decode::<S>(&bytes[..n]).unwrap_err();
            assert!(
                matches!(e, FormatError::Truncated { .. } | FormatError::BadMagic)
                    || (8..16).contains(&n),
                "{n}: {e}"
            );
            assert!(decode::<S>(&bytes[..n]).is_err(), "{n}");
        }
    }

    #[test]
    fn every_flipped_byte_is_refused() {
        let bytes = encode(&sample()).unwrap();
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x40;
            assert!(decode::<S>(&b).is_err(), "flipped byte {i} was accepted");
        }
    }

    #[test]
    fn version_arch_and_length_are_checked() {
        let bytes = encode(&sample()).unwrap();
        let mut v = bytes.clone();
        v[8] = 1; // the version before the TSC offsets
        assert_eq!(
            decode::<S>(&v).unwrap_err(),
            FormatError::Version { found: 1 }
        );
        let mut a = bytes.clone();
        a[12] = 0xaa;
        assert!(matches!(
            decode::<S>(&a).unwrap_err(),
            FormatError::Arch { .. }
        ));
        let mut l = bytes.clone();
        l[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            decode::<S>(&l).unwrap_err(),
            FormatError::Length(_)
        ));
        let mut extra = bytes.clone();
        extra.push(0);
        assert!(decode::<S>(&extra).is_err());
        let mut m = bytes;
        m[0] = b'X';
        assert_eq!(decode::<S>(&m).unwrap_err(), FormatError::BadMagic);
        // A payload that is valid postcard for another type: decoding fails, no panic.
        let other = encode(&7u8).unwrap();
        assert!(matches!(
            decode::<S>(&other).unwrap_err(),
            FormatError::Decode(_)
        ));
    }
}
