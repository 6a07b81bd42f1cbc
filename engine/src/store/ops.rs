//! Store commands: bind, attach, unbind, snapshot, delete, grow. Each is durable
//! when it returns and changes nothing when it fails.

use super::meta::Meta;
use super::{new_uuid, now, Store, MAX_ORIGIN_BYTES};
use crate::error::{Error, Result};
use crate::format::PAGE_SIZE;
use crate::io::{BlockDev, Dev};
use crate::versions::record::{OriginRecord, MAX_MEMO, MAX_ORIGIN_ID};
use crate::versions::Birth;
use std::sync::PoisonError;

fn check_memo(memo: &str) -> Result<()> {
    if memo.len() > MAX_MEMO {
        return Err(Error::MemoTooLong {
            bytes: memo.len(),
            max: MAX_MEMO,
        });
    }
    Ok(())
}

impl Store {
    /// Bind a new origin device under `origin_id`.
    pub fn bind(&self, origin_id: &str, dev: Dev) -> Result<()> {
        if origin_id.is_empty() || origin_id.len() > MAX_ORIGIN_ID {
            return Err(Error::BadOriginId(origin_id.to_string()));
        }
        let size = dev.size();
        if size > MAX_ORIGIN_BYTES {
            return Err(Error::OriginTooLarge {
                origin: origin_id.to_string(),
                bytes: size,
                max: MAX_ORIGIN_BYTES,
            });
        }
        let rec = OriginRecord {
            id: origin_id.to_string(),
            size,
            birthday: now(),
            next_tag: 1,
            next_version: 1,
            rollback: None,
            clean_cursor: None,
            receive: None,
        };
        self.inner.meta()?.add_origin(rec, dev)?;
        self.flush()
    }

    /// Give a bound origin its device (after opening the store). A rollback
    /// that was under way goes on reading and merging on demand; call
    /// [`Store::finish_rollback`] to complete it.
    pub fn attach(&self, origin_id: &str, dev: Dev) -> Result<()> {
        let mut m = self.inner.meta()?;
        let index = m.origin(origin_id)?;
        let o = m.origin_mut(index)?;
        if dev.size() < o.rec().size {
            return Err(Error::OriginShrunk {
                origin: origin_id.to_string(),
                bytes: dev.size(),
                recorded: o.rec().size,
            });
        }
        o.dev = Some(dev);
        Ok(())
    }

    /// Whether the origin has its device attached.
    pub fn is_attached(&self, origin_id: &str) -> Result<bool> {
        let m = self.inner.meta()?;
        let index = m.origin(origin_id)?;
        Ok(m.origin_ref(index)?.dev.is_some())
    }

    /// Remove an origin with no snapshots left from the store, returning the
    /// space of any versions still waiting for the cleaner.
    pub fn unbind(&self, origin_id: &str) -> Result<()> {
        let index = self.inner.meta()?.origin(origin_id)?;
        let shape = self.inner.shape(index);
        let _excl = shape.write().unwrap_or_else(PoisonError::into_inner);
        self.inner.drain(Some(index), true)?;
        {
            let m = self.inner.meta()?;
            let o = m.origin_ref(index)?;
            let snapshots = o.tree().tag_count() as u64 - 1;
            if snapshots > 0 {
                return Err(Error::HasSnapshots {
                    origin: origin_id.to_string(),
                    count: snapshots,
                });
            }
            if o.rec().rollback.is_some() {
                return Err(Error::Busy {
                    what: format!("origin {origin_id} is being rolled back"),
                });
            }
            if o.open_volumes > 0 {
                return Err(Error::Busy {
                    what: format!("origin {origin_id} has {} open volume(s)", o.open_volumes),
                });
            }
        }
        // Every exception left belongs to a ghost: free them all.
        loop {
            let mut m = self.inner.meta()?;
            let batch = m.exception_range(index, 0, 4096)?;
            if batch.is_empty() {
                break;
            }
            for (k, cow) in batch {
                m.remove_exception(index, k.chunk, k.version)?;
                m.free_exception_chunk(cow);
            }
        }
        self.inner.meta()?.remove_origin(index)?;
        self.flush()
    }

    /// Take a snapshot of the origin (`so`). Returns the new tag.
    pub fn snapshot_origin(&self, origin_id: &str, memo: &str) -> Result<u32> {
        self.snapshot_impl(origin_id, None, memo)
    }

    /// Take a snapshot of snapshot `tag` (`ss`). Returns the new tag.
    pub fn snapshot_of(&self, origin_id: &str, tag: u32, memo: &str) -> Result<u32> {
        if tag == 0 {
            return Err(Error::TagZero {
                origin: origin_id.to_string(),
                op: "snapshot of snapshot",
            });
        }
        self.snapshot_impl(origin_id, Some(tag), memo)
    }

    fn snapshot_impl(&self, origin_id: &str, of: Option<u32>, memo: &str) -> Result<u32> {
        check_memo(memo)?;
        let index = self.inner.meta()?.origin(origin_id)?;
        let shape = self.inner.shape(index);
        let _excl = shape.write().unwrap_or_else(PoisonError::into_inner);
        // What the new version reads from the devices must be on them
        // before it exists: held data of this origin goes out first.
        self.inner.drain(Some(index), true)?;
        let tag = {
            let mut m = self.inner.meta()?;
            let of_version = match of {
                Some(t) => Some(m.version_of(index, t)?),
                None => None,
            };
            if of_version.is_none() && m.origin_ref(index)?.rec().rollback.is_some() {
                return Err(Error::Busy {
                    what: format!("origin {origin_id} is being rolled back; snapshot it when the rollback ends"),
                });
            }
            new_snapshot(&mut m, index, of_version, memo)?
        };
        // The snapshot, and every write before it, is durable on return.
        self.flush()?;
        Ok(tag)
    }

    /// Delete snapshot `tag`; its space comes back when the cleaner runs.
    pub fn delete(&self, origin_id: &str, tag: u32) -> Result<()> {
        if tag == 0 {
            return Err(Error::TagZero {
                origin: origin_id.to_string(),
                op: "delete snapshot",
            });
        }
        let index = self.inner.meta()?.origin(origin_id)?;
        let shape = self.inner.shape(index);
        let _excl = shape.write().unwrap_or_else(PoisonError::into_inner);
        // The deleted version's held writes go out before its chunks can
        // be freed.
        self.inner.drain(Some(index), true)?;
        {
            let mut m = self.inner.meta()?;
            m.version_of(index, tag)?;
            let mut o = m.edit(index)?;
            if o.get()
                .rec()
                .rollback
                .as_ref()
                .is_some_and(|r| r.tag == tag)
            {
                return Err(Error::Busy {
                    what: format!("snapshot {tag} of {origin_id} is being rolled back"),
                });
            }
            o.tree(|t, changed| changed.extend(t.untag(tag)));
        }
        self.flush()
    }

    /// Tags of an origin's live snapshots, ascending (0 not included).
    pub fn tags(&self, origin_id: &str) -> Result<Vec<u32>> {
        let m = self.inner.meta()?;
        let o = m.origin_ref(m.origin(origin_id)?)?;
        let mut tags: Vec<u32> = o
            .tree()
            .ids()
            .filter_map(|v| o.tree().get(v))
            .map(|v| v.tag)
            .filter(|&t| t != 0)
            .collect();
        tags.sort_unstable();
        Ok(tags)
    }

    /// Ids of the bound origins.
    pub fn origins(&self) -> Result<Vec<String>> {
        Ok(self.inner.meta()?.origin_ids())
    }

    /// The recorded size of an origin in bytes.
    pub fn origin_size(&self, origin_id: &str) -> Result<u64> {
        let m = self.inner.meta()?;
        Ok(m.origin_ref(m.origin(origin_id)?)?.rec().size)
    }
}

/// Add a snapshot in memory: of the origin (`of` = None) or of a version.
/// `tag` 0 makes a hidden, pinned copy (used by rollback).
pub(super) fn new_snapshot(m: &mut Meta, index: u32, of: Option<u32>, memo: &str) -> Result<u32> {
    new_version(m, index, of, memo, true).map(|(tag, _)| tag)
}

pub(super) fn new_version(
    m: &mut Meta,
    index: u32,
    of: Option<u32>,
    memo: &str,
    tagged: bool,
) -> Result<(u32, u32)> {
    new_version_born(m, index, of, tagged, now(), memo, new_uuid())
}

/// [`new_version`] with a given birthday and identity (a received
/// snapshot carries its sender's).
pub(super) fn new_version_born(
    m: &mut Meta,
    index: u32,
    of: Option<u32>,
    tagged: bool,
    birthday: u64,
    memo: &str,
    uuid: crate::versions::Uuid,
) -> Result<(u32, u32)> {
    let mut o = m.edit(index)?;
    let tag = if tagged {
        if o.get().rec().next_tag == u32::MAX {
            return Err(Error::LimitReached("tags of this origin"));
        }
        o.get().rec().next_tag
    } else {
        0
    };
    let mut next = o.get().rec().next_version;
    let birth = Birth {
        tag,
        birthday,
        memo: memo.to_string(),
        uuid,
    };
    let id = o.tree(|t, changed| match of {
        None => t.snapshot_origin(birth, &mut next, changed),
        Some(v) => t.snapshot_of(v, birth, &mut next, changed),
    })?;
    let rec = o.rec();
    rec.next_version = next;
    if tagged {
        rec.next_tag += 1;
    }
    Ok((tag, id))
}

impl Store {
    /// The COW device was made larger underneath (a file extended, an LV
    /// grown): use the new space at once, online. Returns the store's size
    /// before and after, in bytes. Crash-safe like any commit: the new
    /// bitmap blocks and the superblock that counts the new pages are
    /// written by one commit. A smaller device is refused.
    pub fn grow(&self) -> Result<(u64, u64)> {
        let bytes = self.inner.cow.refresh_size()?;
        let pages = bytes / PAGE_SIZE as u64;
        let old = {
            let mut m = self.inner.meta()?;
            let old = m.sb().page_count;
            if pages < old {
                return Err(Error::CowShrunk {
                    device: self.inner.cow.name().to_string(),
                    bytes,
                    store: old * PAGE_SIZE as u64,
                });
            }
            m.grow(pages);
            old
        };
        if pages > old {
            self.flush()?;
        }
        Ok((old * PAGE_SIZE as u64, pages.max(old) * PAGE_SIZE as u64))
    }
}

impl Store {
    /// The origin's device was made larger underneath: the origin takes the
    /// new size at once (its open volumes see it), online; every snapshot
    /// keeps the size it had (a snapshot taken from now on has the new
    /// one). Returns the origin's size before and after, in bytes. One
    /// commit records the new size and the snapshots' own sizes, so a
    /// crash leaves the old size or the new. A smaller device is refused;
    /// so is a grow while a rollback or a receive runs into the origin.
    /// The origin's recorded size and its device's size now, without
    /// changing anything; a device that shrank, or grew past what the
    /// store addresses, is refused as [`Store::grow_origin`] would.
    pub fn origin_device_size(&self, origin_id: &str) -> Result<(u64, u64)> {
        let (dev, old) = {
            let m = self.inner.meta()?;
            let o = m.origin_ref(m.origin(origin_id)?)?;
            let dev = o
                .dev
                .clone()
                .ok_or_else(|| Error::OriginNotAttached(origin_id.to_string()))?;
            (dev, o.rec().size)
        };
        let bytes = dev.refresh_size()?;
        if bytes < old {
            return Err(Error::OriginShrunk {
                origin: origin_id.to_string(),
                bytes,
                recorded: old,
            });
        }
        if bytes > MAX_ORIGIN_BYTES {
            return Err(Error::OriginTooLarge {
                origin: origin_id.to_string(),
                bytes,
                max: MAX_ORIGIN_BYTES,
            });
        }
        Ok((old, bytes))
    }

    pub fn grow_origin(&self, origin_id: &str) -> Result<(u64, u64)> {
        let index = self.inner.meta()?.origin(origin_id)?;
        let shape = self.inner.shape(index);
        let _excl = shape.write().unwrap_or_else(PoisonError::into_inner);
        // Every write before the grow is durable once the grow is: held
        // data of this origin goes out first (its commit does not carry
        // the new size).
        self.inner.drain(Some(index), true)?;
        let dev = self
            .inner
            .meta()?
            .origin_ref(index)?
            .dev
            .clone()
            .ok_or_else(|| Error::OriginNotAttached(origin_id.to_string()))?;
        let bytes = dev.refresh_size()?;
        let (old, live) = {
            let mut m = self.inner.meta()?;
            let o = m.origin_ref(index)?;
            let old = o.rec().size;
            if bytes < old {
                return Err(Error::OriginShrunk {
                    origin: origin_id.to_string(),
                    bytes,
                    recorded: old,
                });
            }
            if bytes == old {
                return Ok((old, old));
            }
            if bytes > MAX_ORIGIN_BYTES {
                return Err(Error::OriginTooLarge {
                    origin: origin_id.to_string(),
                    bytes,
                    max: MAX_ORIGIN_BYTES,
                });
            }
            if o.rec().rollback.is_some() || o.rec().receive.is_some() {
                return Err(Error::Busy {
                    what: format!(
                        "origin {origin_id} is being rolled back or received into; grow it after"
                    ),
                });
            }
            let live = o.live_size.clone();
            let mut e = m.edit(index)?;
            e.tree(|t, changed| changed.extend(t.keep_sizes(old)));
            e.rec().size = bytes;
            (old, live)
        };
        // Durable before any I/O sees the new size.
        self.flush()?;
        live.store(bytes, std::sync::atomic::Ordering::Release);
        Ok((old, bytes))
    }

    /// The store's space policy (`dms policy`): kept in the store.
    pub fn policy(&self) -> Result<crate::versions::record::StorePolicy> {
        Ok(self.inner.meta()?.policy().clone())
    }

    /// Set the space policy; durable on return.
    pub fn set_policy(&self, p: crate::versions::record::StorePolicy) -> Result<()> {
        if p.low_water > 100 {
            return Err(Error::BadPolicy(format!(
                "a low-water mark of {}%: give 1 to 100 (0: none)",
                p.low_water
            )));
        }
        if p.hook.len() > crate::versions::record::MAX_HOOK {
            return Err(Error::BadPolicy(format!(
                "a hook of {} bytes: at most {}",
                p.hook.len(),
                crate::versions::record::MAX_HOOK
            )));
        }
        self.inner.meta()?.set_policy(p);
        self.flush()
    }
}
