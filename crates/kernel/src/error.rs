//! The one error type of this crate.

use crate::Compression;

/// Why a kernel image could not be parsed or decompressed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The bytes are neither an ELF nor a bzImage, or a mandatory magic is wrong.
    #[error("not a Linux kernel image: {0}")]
    NotAKernel(&'static str),
    /// A structure extends past the end of the data.
    #[error("kernel image truncated: {what} needs {need} bytes, only {have} present")]
    Truncated {
        what: &'static str,
        need: u64,
        have: u64,
    },
    /// The image cannot run as a 64-bit x86 kernel.
    #[error("kernel image is not 64-bit: {0}")]
    Not64Bit(&'static str),
    /// The bzImage boot protocol is older than what this crate handles.
    #[error("boot protocol {major}.{minor:02} too old: {needed} required")]
    ProtocolTooOld {
        major: u8,
        minor: u8,
        needed: &'static str,
    },
    /// The payload's magic is unknown, or the compression is not built in.
    #[error("unsupported kernel payload compression: {0}")]
    UnsupportedCompression(String),
    /// The decompressor rejected the payload.
    #[error("{compression} decompression of the kernel payload failed: {cause}")]
    Decompress {
        compression: Compression,
        cause: String,
    },
    /// The output size differs from the size recorded in the payload's trailer.
    #[error("{compression} payload decompressed to {actual} bytes, its trailer says {expected}")]
    SizeMismatch {
        compression: Compression,
        expected: u64,
        actual: u64,
    },
    /// The decompressed output exceeds [`crate::MAX_DECOMPRESSED_SIZE`].
    #[error("{compression} payload decompresses to more than {limit} bytes")]
    TooLarge {
        compression: Compression,
        limit: u64,
    },
    /// A structurally invalid ELF file.
    #[error("invalid ELF vmlinux: {0}")]
    BadElf(String),
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
