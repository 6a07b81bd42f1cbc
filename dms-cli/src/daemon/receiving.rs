//! What a receive forbids while it runs or waits to be resumed: exposing
//! its origin (devices.rs and transfer.rs both ask).

use super::fail::{Fail, Res};
use super::State;
use dms_engine::{ErrorKind, Store};

/// An origin may be exposed only when no receive into it runs or waits to
/// be resumed: its writes would mix into the received snapshot.
pub(crate) fn origin_free_of_receives(
    st: &State,
    store: &Store,
    cow: &std::path::Path,
    origin_id: &str,
) -> Res<()> {
    if st
        .receiving
        .contains_key(&(cow.to_path_buf(), origin_id.to_string()))
    {
        return Err(Fail::kind(
            format!("origin {origin_id} is receiving a stream; expose it when that ends"),
            ErrorKind::Busy,
        ));
    }
    let status = store.status()?;
    if status
        .origins
        .iter()
        .any(|o| o.id == origin_id && o.receive.is_some())
    {
        return Err(Fail::kind(
            format!(
                "origin {origin_id} has an interrupted receive; resume it (dms send --resume) or undo it (dms receive --abort) first"
            ),
            ErrorKind::Busy,
        ));
    }
    Ok(())
}
