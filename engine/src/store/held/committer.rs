//! The committer: a thread per store that writes held entries out as they
//! come, one commit for everything held meanwhile.

use super::{HeldTable, RETRY};
use crate::store::{lock, Inner};
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError, Weak};

/// Start the committer: a thread that drains held entries as they come, one
/// commit for everything held meanwhile. It ends with the store.
pub(crate) fn spawn_committer(inner: &Arc<Inner>) {
    let weak = Arc::downgrade(inner);
    let table = inner.held.clone();
    let spawned = std::thread::Builder::new()
        .name("dms-committer".into())
        .spawn(move || committer(weak, table));
    match spawned {
        Ok(_) => {
            inner.held.thread.store(true, Ordering::SeqCst);
            inner.held.set_background(true);
        }
        Err(e) => tracing::warn!("no committer thread ({e}); writers drain held data themselves"),
    }
}

/// Sleep until there is held data to write; false on shutdown. The
/// committer does not linger: a flush that comes soon after a copy-out (a
/// database's commit) then mostly finds the copy-out durable already, and
/// whatever is held while a round runs shares the next round's commit.
fn wait_for_work(t: &HeldTable) -> bool {
    let mut g = lock(&t.sleep);
    loop {
        if t.shutdown.load(Ordering::SeqCst) {
            return false;
        }
        t.idle.store(true, Ordering::SeqCst);
        if t.any() && t.background.load(Ordering::SeqCst) {
            t.idle.store(false, Ordering::SeqCst);
            return true;
        }
        g = t.work.wait(g).unwrap_or_else(PoisonError::into_inner);
    }
}

fn committer(weak: Weak<Inner>, table: Arc<HeldTable>) {
    while wait_for_work(&table) {
        let Some(inner) = weak.upgrade() else {
            return;
        };
        let res = inner.drain(None, false);
        let failed = inner.check_failed().is_err();
        drop(inner);
        if failed {
            // Nothing more may be written; writers see the failure.
            table.shut_down();
            return;
        }
        if let Err(e) = res {
            tracing::warn!("writing held data: {e}; retrying");
            let g = lock(&table.sleep);
            let _ = table
                .work
                .wait_timeout(g, RETRY * 5)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}
