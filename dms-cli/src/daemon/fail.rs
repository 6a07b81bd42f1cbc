//! A refused or failed request, as the daemon answers it: exit code, one
//! line, and the error kind scripts and the Python module match on.

use dms_engine::{Error, ErrorKind};

/// A failed request: exit code, message, and the engine's error kind.
pub(crate) struct Fail {
    pub code: u8,
    pub msg: String,
    pub kind: ErrorKind,
}

impl Fail {
    /// A refusal of the daemon's own, with an error kind.
    pub fn kind(msg: impl Into<String>, kind: ErrorKind) -> Fail {
        Fail {
            code: 1,
            msg: msg.into(),
            kind,
        }
    }

    pub fn new(code: u8, msg: impl Into<String>) -> Fail {
        Fail {
            code,
            msg: msg.into(),
            kind: if code == 2 {
                ErrorKind::Usage
            } else {
                ErrorKind::Failed
            },
        }
    }
}

impl From<Error> for Fail {
    fn from(e: Error) -> Fail {
        Fail {
            code: 1,
            msg: e.to_string(),
            kind: e.kind(),
        }
    }
}

pub(crate) type Res<T> = Result<T, Fail>;

pub(crate) fn fail<T>(msg: impl Into<String>) -> Res<T> {
    Err(Fail::new(1, msg.into()))
}

pub(crate) fn usage<T>(msg: impl Into<String>) -> Res<T> {
    Err(Fail::new(2, msg.into()))
}
