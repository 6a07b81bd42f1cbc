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
    /// `dms du`: the space of the snapshots of a dm_dev's origin.
    Du {
        name: String,
    },
    /// `dms grow`: use the space of a COW device made larger underneath.
    Grow {
        name: String,
    },
    /// `dms policy`: show, or set parts of, a store's space policy.
    Policy {
        name: String,
        low_water: Option<u8>,
        hook: Option<String>,
        /// `fail` or `delete-oldest`.
        #[serde(default)]
        on_full: Option<String>,
        #[serde(default)]
        keep_min: Option<u32>,
    },
    /// A stream of a snapshot, in frames (src/frames.rs), then the
    /// response. Answered `held: false` when the daemon does not hold the
    /// store (the client then sends offline).
    Send(SendArgs),
    /// Frames of a stream follow; the response comes last.
    Receive(ReceiveArgs),
    /// `dms dump`, `dms delta` and `dms check` on a store the daemon holds.
    Inspect {
        cow: String,
        what: Inspect,
    },
    Ping,
    Shutdown {
        force: bool,
    },
}

/// `dms send` arguments.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct SendArgs {
    /// The COW device (an absolute path).
    pub cow: String,
    pub origin_id: Option<String>,
    /// The origin device, when the store does not know where it is.
    pub origin_dev: Option<String>,
    pub tag: u32,
    pub from: Option<u32>,
    /// `dms`, `rbd-v1` or `rbd-v2`.
    pub format: String,
    pub resume: Option<String>,
}

/// What `dms receive` does.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ReceiveAction {
    /// Read a stream.
    #[default]
    Stream,
    /// Print the resume token of an interrupted receive.
    Token,
    /// Undo an interrupted receive.
    Abort,
}

/// `dms receive` arguments.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct ReceiveArgs {
    /// The origin and COW devices (absolute paths).
    pub origin: String,
    pub cow: String,
    pub origin_id: Option<String>,
    /// Bind the origin first (-b); format the store (-f: Some(false), -F:
    /// Some(true)) with chunk size -c.
    pub bind: bool,
    pub format_store: Option<bool>,
    pub chunk_pages: Option<u32>,
    pub format: String,
    pub force: bool,
    pub action: ReceiveAction,
}

/// An offline command run on a live store.
#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Inspect {
    Dump {
        origin_id: Option<String>,
        tag: Option<u32>,
        json: bool,
    },
    Delta {
        origin_id: Option<String>,
        tag_a: u32,
        tag_b: u32,
        json: bool,
    },
    Check {
        json: bool,
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

    /// The answer to a command on a store the daemon does not hold: the
    /// client runs it offline.
    pub fn not_held(cow: &str) -> Response {
        Response {
            code: 1,
            error: Some(format!("the daemon does not hold {cow}")),
            kind: Some(ErrorKind::NotFound),
            data: Some(serde_json::json!({ "held": false })),
            ..Default::default()
        }
    }

    pub fn is_not_held(&self) -> bool {
        self.code != 0 && self.data.as_ref().is_some_and(|d| d["held"] == false)
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
