//! Typed errors of the engine. Each variant names the thing at fault.

use std::fmt;
use std::io;

/// What kind of metadata block was expected when a corruption was found.
pub type BlockKind = &'static str;

/// Every error the engine returns.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// An I/O error from a backend, with the device and operation.
    Io {
        device: String,
        op: &'static str,
        source: io::Error,
    },
    /// A metadata block failed validation.
    Corrupt {
        block: u64,
        expected: BlockKind,
        reason: String,
    },
    /// No superblock slot holds a valid store.
    NotAStore { device: String, reason: String },
    /// Formatting was refused because the device already holds a store.
    AlreadyFormatted { device: String },
    /// The chunk size is not a power of two in 1..=64 pages.
    BadChunkSize(u64),
    /// The COW device is too small to hold a store.
    DeviceTooSmall {
        device: String,
        bytes: u64,
        needed: u64,
    },
    /// A space policy that cannot be: a mark over 100%, a hook too long.
    BadPolicy(String),
    /// The COW device is now smaller than the store that uses it
    /// (shrinking is not supported).
    CowShrunk {
        device: String,
        bytes: u64,
        store: u64,
    },
    /// An origin larger than the store can address.
    OriginTooLarge {
        origin: String,
        bytes: u64,
        max: u64,
    },
    /// The origin device is smaller than recorded at bind time.
    OriginShrunk {
        origin: String,
        bytes: u64,
        recorded: u64,
    },
    /// An origin id already bound to the store.
    OriginExists(String),
    /// A device argument that names no file or device.
    NoSuchDevice { arg: String, looked_at: String },
    /// An origin id the store does not know.
    UnknownOrigin(String),
    /// The origin is known but its device is not attached.
    OriginNotAttached(String),
    /// An origin id that is empty or too long.
    BadOriginId(String),
    /// A tag that does not exist (never existed, or deleted).
    UnknownTag { origin: String, tag: u32 },
    /// Tag 0 (the origin) was given where a snapshot is required.
    TagZero { origin: String, op: &'static str },
    /// Unbinding an origin that still has snapshots.
    HasSnapshots { origin: String, count: u64 },
    /// A memo longer than allowed.
    MemoTooLong { bytes: usize, max: usize },
    /// The COW device has no room left.
    NoSpace,
    /// Too many versions or origins.
    LimitReached(&'static str),
    /// I/O out of the device's range.
    OutOfRange { offset: u64, len: u64, size: u64 },
    /// An operation that conflicts with one in progress.
    Busy { what: String },
    /// The store failed earlier (I/O error during commit); reopen it.
    Failed(String),
    /// A stream that is damaged or not a stream: where (bytes into it) and
    /// what is wrong.
    BadStream { at: u64, reason: String },
    /// An incremental stream whose base the receiving origin does not hold.
    WrongBase(String),
    /// A resume token that is malformed or names nothing here.
    BadToken(String),
    /// A receive cut short (the stream ended or its source failed) with
    /// what it holds kept: the token continues it.
    Interrupted { cause: String, token: String },
    /// No interrupted receive on this origin.
    NoReceive(String),
    /// Two versions of different sizes where one size is needed (a
    /// snapshot taken before its origin grew).
    SizeDiffers(String),
}

/// What kind of failure an error is: one vocabulary for the engine, the
/// daemon's control protocol, the `dms` command and the Python exceptions.
/// On the wire and in `--json` output each kind is its [`ErrorKind::name`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "snake_case")
)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A device failed (EIO and friends).
    Io,
    /// Metadata that fails validation, or no store at all.
    Corrupt,
    /// The thing to create exists already.
    Exists,
    /// An origin, tag or dm_dev that does not exist.
    NotFound,
    /// The COW device is full.
    NoSpace,
    /// In use, or conflicting with work in progress.
    Busy,
    /// Out of versions, tags or origins.
    Limit,
    /// The store failed earlier and must be reopened.
    StoreFailed,
    /// A bad argument: chunk size, tag 0, memo length, range, id.
    Invalid,
    /// A malformed command, table or message (exit code 2).
    Usage,
    /// Any other failure (exit code 1); also what an unknown kind reads as.
    #[cfg_attr(feature = "serde", serde(other))]
    Failed,
}

impl ErrorKind {
    /// Every kind.
    pub const ALL: [ErrorKind; 11] = [
        ErrorKind::Io,
        ErrorKind::Corrupt,
        ErrorKind::Exists,
        ErrorKind::NotFound,
        ErrorKind::NoSpace,
        ErrorKind::Busy,
        ErrorKind::Limit,
        ErrorKind::StoreFailed,
        ErrorKind::Invalid,
        ErrorKind::Usage,
        ErrorKind::Failed,
    ];

    /// The stable name scripts see: `io`, `not_found`, `no_space`, ...
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::Io => "io",
            ErrorKind::Corrupt => "corrupt",
            ErrorKind::Exists => "exists",
            ErrorKind::NotFound => "not_found",
            ErrorKind::NoSpace => "no_space",
            ErrorKind::Busy => "busy",
            ErrorKind::Limit => "limit",
            ErrorKind::StoreFailed => "store_failed",
            ErrorKind::Invalid => "invalid",
            ErrorKind::Usage => "usage",
            ErrorKind::Failed => "failed",
        }
    }

    /// The kind of a name, if it is one.
    pub fn from_name(name: &str) -> Option<ErrorKind> {
        ErrorKind::ALL.into_iter().find(|k| k.name() == name)
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Result type of the engine.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn io(device: &str, op: &'static str, source: io::Error) -> Self {
        Error::Io {
            device: device.to_string(),
            op,
            source,
        }
    }

    pub(crate) fn corrupt(block: u64, expected: BlockKind, reason: impl Into<String>) -> Self {
        Error::Corrupt {
            block,
            expected,
            reason: reason.into(),
        }
    }

    /// The kind of error, for scripts and bindings.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Io { .. } | Error::Interrupted { .. } => ErrorKind::Io,
            Error::Corrupt { .. } | Error::NotAStore { .. } | Error::BadStream { .. } => {
                ErrorKind::Corrupt
            }
            Error::AlreadyFormatted { .. } | Error::OriginExists(_) => ErrorKind::Exists,
            Error::UnknownOrigin(_)
            | Error::NoReceive(_)
            | Error::UnknownTag { .. }
            | Error::OriginNotAttached(_)
            | Error::NoSuchDevice { .. } => ErrorKind::NotFound,
            Error::NoSpace => ErrorKind::NoSpace,
            Error::Busy { .. } | Error::HasSnapshots { .. } => ErrorKind::Busy,
            Error::LimitReached(_) => ErrorKind::Limit,
            Error::Failed(_) => ErrorKind::StoreFailed,
            Error::BadChunkSize(_)
            | Error::DeviceTooSmall { .. }
            | Error::CowShrunk { .. }
            | Error::BadPolicy(_)
            | Error::OriginTooLarge { .. }
            | Error::OriginShrunk { .. }
            | Error::BadOriginId(_)
            | Error::TagZero { .. }
            | Error::MemoTooLong { .. }
            | Error::WrongBase(_)
            | Error::BadToken(_)
            | Error::OutOfRange { .. }
            | Error::SizeDiffers(_) => ErrorKind::Invalid,
        }
    }

    /// The errno this error maps to, for block-level front ends (NBD, FUSE).
    pub fn errno(&self) -> i32 {
        match self {
            Error::NoSpace => libc::ENOSPC,
            Error::OutOfRange { .. } | Error::SizeDiffers(_) => libc::EINVAL,
            Error::UnknownTag { .. } | Error::UnknownOrigin(_) | Error::NoSuchDevice { .. } => {
                libc::ENOENT
            }
            Error::Busy { .. } => libc::EBUSY,
            Error::Io { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            _ => libc::EIO,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { device, op, source } => write!(f, "{device}: {op} failed: {source}"),
            Error::Corrupt {
                block,
                expected,
                reason,
            } => {
                write!(
                    f,
                    "metadata block {block} ({expected}) is corrupt: {reason}"
                )
            }
            Error::NotAStore { device, reason } => {
                write!(f, "{device} does not hold a dms store: {reason}")
            }
            Error::AlreadyFormatted { device } => write!(
                f,
                "{device} already holds a dms store; force formatting to overwrite it"
            ),
            Error::BadChunkSize(n) => write!(
                f,
                "chunk size {n} is invalid: it must be a power of two from 1 to 64 pages"
            ),
            Error::DeviceTooSmall {
                device,
                bytes,
                needed,
            } => {
                write!(
                    f,
                    "{device} is too small ({bytes} bytes); a store needs at least {needed}"
                )
            }
            Error::BadPolicy(why) => write!(f, "bad policy: {why}"),
            Error::CowShrunk {
                device,
                bytes,
                store,
            } => write!(
                f,
                "{device} has {bytes} bytes, less than the {store} its store uses: a COW device cannot shrink"
            ),
            Error::OriginTooLarge { origin, bytes, max } => write!(
                f,
                "origin {origin} is {bytes} bytes; this store can address at most {max}"
            ),
            Error::OriginShrunk {
                origin,
                bytes,
                recorded,
            } => write!(
                f,
                "origin {origin} is {bytes} bytes but was bound with {recorded}"
            ),
            Error::OriginExists(id) => write!(f, "origin {id} is already bound to this store"),
            Error::NoSuchDevice { arg, looked_at } => {
                if arg.is_empty() {
                    write!(f, "empty device name")
                } else if !arg.contains('/') && looked_at != arg {
                    write!(f, "{arg}: no such file here, and no device {looked_at}")
                } else {
                    write!(f, "{looked_at}: no such device or file")
                }
            }
            Error::UnknownOrigin(id) => write!(f, "origin {id} is not bound to this store"),
            Error::OriginNotAttached(id) => write!(f, "origin {id} has no device attached"),
            Error::BadOriginId(id) => write!(f, "origin id {id:?} is invalid (1..=255 bytes)"),
            Error::UnknownTag { origin, tag } => {
                write!(f, "origin {origin} has no snapshot with tag {tag}")
            }
            Error::TagZero { origin, op } => {
                write!(
                    f,
                    "{op}: tag 0 is the origin {origin} itself, not a snapshot"
                )
            }
            Error::HasSnapshots { origin, count } => write!(
                f,
                "origin {origin} still has {count} snapshot(s); delete them first"
            ),
            Error::MemoTooLong { bytes, max } => {
                write!(f, "memo is {bytes} bytes; at most {max} are allowed")
            }
            Error::NoSpace => write!(f, "the COW device is full"),
            Error::LimitReached(what) => write!(f, "limit reached: {what}"),
            Error::OutOfRange { offset, len, size } => write!(
                f,
                "I/O of {len} bytes at {offset} is past the end of the device ({size} bytes)"
            ),
            Error::Busy { what } => write!(f, "busy: {what}"),
            Error::Failed(why) => write!(f, "the store failed earlier and must be reopened: {why}"),
            Error::BadStream { at, reason } => {
                write!(f, "the stream is damaged at byte {at}: {reason}")
            }
            Error::WrongBase(why) => write!(f, "wrong base: {why}"),
            Error::BadToken(why) => write!(f, "bad resume token: {why}"),
            Error::Interrupted { cause, token } => write!(
                f,
                "the receive was interrupted ({cause}); what arrived is kept: resume with token {token}"
            ),
            Error::NoReceive(origin) => {
                write!(f, "origin {origin} has no interrupted receive")
            }
            Error::SizeDiffers(what) => f.write_str(what),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
