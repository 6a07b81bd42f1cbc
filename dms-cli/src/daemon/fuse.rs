//! The mapper directory: one file per dm_dev, served over FUSE. Reads and
//! writes become `Volume` calls; fsync is a flush of the store; discards and
//! zeroing (fallocate, as loop devices send them) write zeros (a discard
//! gives a sparse origin file its holes back).

use dms_engine::Volume;
use fuser::{
    BsdFileFlags, Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, InitFlags, KernelConfig, LockOwner, MountOption, OpenFlags, ReplyAttr,
    ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request,
    SessionACL, TimeOrNow, WriteFlags,
};
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

/// Attributes are not cached: a name may come back as another device.
const TTL: Duration = Duration::from_secs(0);

struct File {
    ino: u64,
    volume: Arc<Volume>,
    read_only: bool,
    open: AtomicUsize,
    created: SystemTime,
}

#[derive(Default)]
struct Shared {
    files: RwLock<BTreeMap<String, Arc<File>>>,
    next_ino: AtomicU64,
}

impl Shared {
    fn by_ino(&self, ino: u64) -> Option<Arc<File>> {
        self.files
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .find(|f| f.ino == ino)
            .cloned()
    }
}

struct Fs {
    shared: Arc<Shared>,
    uid: u32,
    gid: u32,
    start: SystemTime,
    /// A test hook: `DMS_TEST_RELEASE_DELAY_MS` in the daemon's environment
    /// delays each release by that much, standing in for a kernel that
    /// sends it late after close(2) has returned.
    release_delay: Option<std::time::Duration>,
}

impl Fs {
    fn attr(&self, f: &File) -> FileAttr {
        let size = f.volume.size();
        FileAttr {
            ino: INodeNo(f.ino),
            size,
            blocks: size.div_ceil(512),
            atime: f.created,
            mtime: f.created,
            ctime: f.created,
            crtime: f.created,
            kind: FileType::RegularFile,
            perm: if f.read_only { 0o400 } else { 0o600 },
            nlink: 1,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    fn root_attr(&self) -> FileAttr {
        FileAttr {
            ino: INodeNo::ROOT,
            size: 0,
            blocks: 0,
            atime: self.start,
            mtime: self.start,
            ctime: self.start,
            crtime: self.start,
            kind: FileType::Directory,
            perm: 0o755,
            nlink: 2,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }
}

fn errno(e: &dms_engine::Error) -> Errno {
    Errno::from_i32(e.errno())
}

impl Filesystem for Fs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(1 << 20);
        let _ = config.set_max_readahead(1 << 20);
        let _ = config.add_capabilities(InitFlags::FUSE_ASYNC_DIO);
        let _ = config.set_max_background(64);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if parent != INodeNo::ROOT {
            return reply.error(Errno::ENOENT);
        }
        let f = name.to_str().and_then(|n| {
            self.shared
                .files
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .get(n)
                .cloned()
        });
        match f {
            Some(f) => reply.entry(&TTL, &self.attr(&f), Generation(0)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        if ino == INodeNo::ROOT {
            return reply.attr(&TTL, &self.root_attr());
        }
        match self.shared.by_ino(ino.0) {
            Some(f) => reply.attr(&TTL, &self.attr(&f)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let Some(f) = self.shared.by_ino(ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        // A device has a fixed size.
        if size.is_some_and(|s| s != f.volume.size()) {
            return reply.error(Errno::EPERM);
        }
        reply.attr(&TTL, &self.attr(&f));
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.shared.by_ino(ino.0) {
            Some(f) => {
                f.open.fetch_add(1, Ordering::SeqCst);
                reply.opened(
                    FileHandle(ino.0),
                    FopenFlags::FOPEN_DIRECT_IO | FopenFlags::FOPEN_PARALLEL_DIRECT_WRITES,
                )
            }
            None if ino == INodeNo::ROOT => reply.error(Errno::EISDIR),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        if let Some(d) = self.release_delay {
            std::thread::sleep(d);
        }
        if let Some(f) = self.shared.by_ino(ino.0) {
            let _ = f
                .open
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        }
        reply.ok();
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let Some(f) = self.shared.by_ino(ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        let end = offset.saturating_add(u64::from(size)).min(f.volume.size());
        if offset >= end {
            return reply.data(&[]);
        }
        let mut buf = vec![0u8; (end - offset) as usize];
        match f.volume.read_at(&mut buf, offset) {
            Ok(()) => reply.data(&buf),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let Some(f) = self.shared.by_ino(ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        if f.read_only {
            return reply.error(Errno::EROFS);
        }
        let size = f.volume.size();
        if offset >= size {
            return reply.error(Errno::ENOSPC);
        }
        let n = (data.len() as u64).min(size - offset) as usize;
        match f.volume.write_at(&data[..n], offset) {
            Ok(()) => reply.written(n as u32),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let Some(f) = self.shared.by_ino(ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        if f.read_only {
            return reply.error(Errno::EROFS);
        }
        let supported =
            libc::FALLOC_FL_KEEP_SIZE | libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE;
        if mode & !supported != 0 {
            return reply.error(Errno::EOPNOTSUPP);
        }
        let size = f.volume.size();
        let end = offset.saturating_add(length);
        if mode & (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE) == 0 {
            return if end <= size {
                reply.ok()
            } else {
                reply.error(Errno::ENOSPC)
            };
        }
        let end = end.min(size);
        if offset >= end {
            return reply.ok();
        }
        match f.volume.discard(offset, end - offset) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lo: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let Some(f) = self.shared.by_ino(ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        match f.volume.flush() {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        if ino != INodeNo::ROOT {
            return reply.error(Errno::ENOTDIR);
        }
        let files = self.shared.files.read().unwrap_or_else(|e| e.into_inner());
        let mut entries = vec![
            (INodeNo::ROOT, FileType::Directory, ".".to_string()),
            (INodeNo::ROOT, FileType::Directory, "..".to_string()),
        ];
        entries.extend(
            files
                .iter()
                .map(|(n, f)| (INodeNo(f.ino), FileType::RegularFile, n.clone())),
        );
        for (i, (ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(*ino, (i + 1) as u64, *kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let files = self.shared.files.read().unwrap_or_else(|e| e.into_inner());
        let blocks: u64 = files.values().map(|f| f.volume.size() / 4096).sum();
        reply.statfs(blocks, 0, 0, files.len() as u64 + 1, 0, 4096, 255, 4096);
    }
}

/// The mounted mapper directory.
pub struct Mapper {
    dir: PathBuf,
    shared: Arc<Shared>,
    session: Mutex<Option<fuser::BackgroundSession>>,
}

fn lazy_unmount(dir: &Path) {
    if let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) {
        // SAFETY: umount2 with a valid C string; failure (not mounted) is fine.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}

impl Mapper {
    /// Mount at `dir`, replacing a mount left behind by a killed daemon;
    /// `threads` serve requests at once.
    pub fn mount(dir: &Path, threads: usize) -> std::io::Result<Mapper> {
        // Loop devices left on the files of a killed daemon only return EIO.
        super::loopdev::detach_stale(dir);
        lazy_unmount(dir);
        std::fs::create_dir_all(dir)?;
        let shared = Arc::new(Shared {
            files: RwLock::new(BTreeMap::new()),
            next_ino: AtomicU64::new(2),
        });
        // SAFETY: getuid/getgid have no preconditions.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        let fs = Fs {
            shared: shared.clone(),
            uid,
            gid,
            start: SystemTime::now(),
            release_delay: std::env::var("DMS_TEST_RELEASE_DELAY_MS")
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
                .map(|ms| std::time::Duration::from_millis(ms.min(10_000))),
        };
        let mut cfg = Config::default();
        cfg.mount_options = vec![
            MountOption::FSName("dms".into()),
            MountOption::Subtype("dms".into()),
            MountOption::RW,
            MountOption::DefaultPermissions,
            MountOption::NoAtime,
        ];
        cfg.acl = SessionACL::All;
        cfg.n_threads = Some(threads.max(1));
        cfg.clone_fd = true;
        let session = fuser::spawn_mount(fs, dir, &cfg)?;
        Ok(Mapper {
            dir: dir.to_path_buf(),
            shared,
            session: Mutex::new(Some(session)),
        })
    }

    pub fn add(
        &self,
        name: &str,
        volume: Arc<Volume>,
        read_only: bool,
    ) -> std::io::Result<PathBuf> {
        let mut files = self.shared.files.write().unwrap_or_else(|e| e.into_inner());
        if files.contains_key(name) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("{name} exists"),
            ));
        }
        let ino = self.shared.next_ino.fetch_add(1, Ordering::SeqCst);
        files.insert(
            name.to_string(),
            Arc::new(File {
                read_only,
                ino,
                volume,
                open: AtomicUsize::new(0),
                created: SystemTime::now(),
            }),
        );
        Ok(self.dir.join(name))
    }

    pub fn remove(&self, name: &str) -> std::io::Result<()> {
        self.shared
            .files
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
        Ok(())
    }

    /// The file of a dm_dev.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Open handles on a dm_dev's file.
    pub fn open_count(&self, name: &str) -> usize {
        self.shared
            .files
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .map_or(0, |f| f.open.load(Ordering::SeqCst))
    }

    pub fn unmount(&self) {
        let session = self
            .session
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(s) = session {
            let res = if s.guard.is_finished() {
                s.join()
            } else {
                s.umount_and_join()
            };
            if let Err(e) = res {
                tracing::warn!("unmounting {}: {e}; detaching it", self.dir.display());
                lazy_unmount(&self.dir);
            }
        }
    }
}
