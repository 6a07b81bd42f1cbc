//! The control protocol: one JSON request per line, one JSON response.

use dms_engine::ErrorKind;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Create a dm_dev from a table line; `loop_dev` attaches a loop device.
    Create {
        name: String,
        table: String,
        loop_dev: bool,
        #[serde(default)]
        read_only: bool,
    },
    /// Create a dm_dev from target arguments (`co ...`/`cs ...`, absolute
    /// paths); the daemon takes the length from the origin device.
    CreateArgs {
        name: String,
        args: Vec<String>,
        #[serde(default)]
        loop_dev: bool,
        #[serde(default)]
        read_only: bool,
    },
    /// Remove a dm_dev (refused while busy unless forced).
    Remove {
        name: String,
        force: bool,
    },
    RemoveAll {
        force: bool,
    },
    /// A dm-snap-mv message to a dm_dev.
    Message {
        name: String,
        args: Vec<String>,
    },
    /// `dmsetup status` lines.
    Status {
        name: Option<String>,
    },
    /// `dmsetup table` lines.
    Table {
        name: Option<String>,
    },
    /// `dms list` data.
    List {
        name: Option<String>,
    },
    /// Wait until background work (cleaning) is done.
    Settle,
    Ping,
    Shutdown {
        force: bool,
    },
}

#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct Response {
    /// 0 success, 1 operation failed, 2 bad usage.
    pub code: u8,
    /// One line, for failures.
    pub error: Option<String>,
    /// The kind of failure (`not_found`, `busy`, `no_space`, ..., `usage`
    /// for bad usage, `failed` otherwise): [`ErrorKind::name`].
    #[serde(default)]
    pub kind: Option<ErrorKind>,
    /// Text to print on stdout.
    pub output: String,
    /// Structured result (list data, new tag, loop device).
    pub data: Option<serde_json::Value>,
}

impl Response {
    pub fn ok(output: String) -> Response {
        Response {
            output,
            ..Default::default()
        }
    }

    pub fn fail(code: u8, error: impl Into<String>, kind: ErrorKind) -> Response {
        Response {
            code,
            error: Some(error.into()),
            kind: Some(kind),
            ..Default::default()
        }
    }
}
