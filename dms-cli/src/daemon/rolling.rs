//! Background rollbacks the daemon runs again: after a restart, and after a
//! full COW device stopped one and a grow or a policy change may have made
//! room.

use super::{Daemon, State};
use std::path::PathBuf;
use std::sync::Arc;

/// Carry on, in the background, a rollback that a restart interrupted.
pub(crate) fn resume_rollback(d: &Arc<Daemon>, st: &mut State, cow: &PathBuf, origin_id: &str) {
    let key = (cow.clone(), origin_id.to_string());
    if st.rolling.contains(&key) {
        return;
    }
    let Some(store) = st.stores.get(cow).map(|e| e.store.clone()) else {
        return;
    };
    if !matches!(store.rollback_pending(origin_id), Ok(Some(_))) {
        return;
    }
    st.rolling.insert(key.clone());
    st.stalled.remove(&key);
    let d = d.clone();
    let origin_id = origin_id.to_string();
    tracing::info!("resuming the rollback of {origin_id}");
    std::thread::spawn(move || {
        let r = store.finish_rollback(&origin_id);
        let mut st = d.lock();
        st.rolling.remove(&key);
        if let Err(e) = r {
            tracing::error!("rollback of {origin_id} failed: {e}");
            st.stalled.insert(key, e.to_string());
        }
        drop(st);
        d.kick();
    });
}

/// Start again the rollbacks into origins of store `cow` that stopped
/// (after a grow or a policy change may have made room).
pub(crate) fn resume_stalled(d: &Arc<Daemon>, cow: &PathBuf) {
    let mut st = d.lock();
    let origins: Vec<String> = st
        .stalled
        .keys()
        .filter(|(c, _)| c == cow)
        .map(|(_, o)| o.clone())
        .collect();
    for o in origins {
        st.stalled.remove(&(cow.clone(), o.clone()));
        resume_rollback(d, &mut st, cow, &o);
    }
}
