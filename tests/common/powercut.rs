//! A file system that loses what was not made durable: the power-cut
//! simulator of `tests/power_cut.rs`, after LazyFS's design (the FUSE file
//! system Jepsen uses), written for ferry.
//!
//! Every file keeps two states: what is durable and what processes see.
//! A write changes only what is seen; `fsync`/`fdatasync` of the file makes
//! its data (size included) durable. A directory's entries (a file created,
//! removed or renamed in it) become durable only with an `fsync` of the
//! directory, as POSIX promises no more (SQLite syncs the directory of a
//! write-ahead log it creates; ferry must do so for what it creates).
//! [`CutFs::cut`] is the power cut: with the processes on it killed, it
//! unmounts (so no page of the kernel's cache survives), puts every file
//! and directory back to its durable state, optionally lets a prefix of a
//! file's unsynced writes reach the "disk" with the last of them torn at a
//! 512-byte sector, and mounts again.
//!
//! It is FUSE rather than a SQLite VFS shim because the real `ferry` binary
//! runs on it unchanged, and it judges every file ferry keeps (lock file,
//! drain reserve, the data directory itself), not only SQLite's. It also
//! counts what reaches the file system (bytes written per file kind,
//! fsyncs), which the SD-card wear benchmark reports.

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

/// Attributes and entries are not cached by the kernel: every lookup sees
/// the state as it is now (the tests are not about speed).
const TTL: Duration = Duration::ZERO;
/// Torn writes keep whole sectors of this size.
const SECTOR: usize = 512;

/// What reached the file system, for the wear benchmark.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    /// Bytes written to the database file, its write-ahead log, its shared
    /// memory index, and any other file.
    pub db_bytes: u64,
    pub wal_bytes: u64,
    pub shm_bytes: u64,
    pub other_bytes: u64,
    /// `fsync`s and `fdatasync`s of files, and `fsync`s of directories.
    pub file_syncs: u64,
    pub dir_syncs: u64,
}

impl Counters {
    pub fn bytes(&self) -> u64 {
        self.db_bytes + self.wal_bytes + self.shm_bytes + self.other_bytes
    }

    pub fn since(&self, earlier: &Counters) -> Counters {
        Counters {
            db_bytes: self.db_bytes - earlier.db_bytes,
            wal_bytes: self.wal_bytes - earlier.wal_bytes,
            shm_bytes: self.shm_bytes - earlier.shm_bytes,
            other_bytes: self.other_bytes - earlier.other_bytes,
            file_syncs: self.file_syncs - earlier.file_syncs,
            dir_syncs: self.dir_syncs - earlier.dir_syncs,
        }
    }
}

/// What a cut did, for the test's report.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CutReport {
    /// Unsynced bytes dropped, over all files.
    pub dropped_bytes: u64,
    /// Files there before the cut whose name was not durable, gone.
    pub vanished: Vec<String>,
    /// A file whose last surviving unsynced write was torn.
    pub torn: Option<String>,
}

/// How a cut treats the writes not made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CutMode {
    /// All of them vanish (LazyFS's default).
    DropAll,
    /// Per file, a prefix of them (in the order written) reached the disk;
    /// the last of that prefix only in part (whole sectors). `pick(n)`
    /// draws from the test's seed.
    TornPrefix,
}

enum Op {
    Write { offset: usize, data: Vec<u8> },
    Truncate(usize),
}

impl Op {
    fn apply(&self, to: &mut Vec<u8>) {
        match self {
            Op::Write { offset, data } => {
                let end = offset + data.len();
                if to.len() < end {
                    to.resize(end, 0);
                }
                to[*offset..end].copy_from_slice(data);
            }
            Op::Truncate(len) => to.resize(*len, 0),
        }
    }
}

#[derive(Default)]
struct FileData {
    durable: Vec<u8>,
    current: Vec<u8>,
    /// Changes since the last sync, in order.
    pending: Vec<Op>,
}

#[derive(Default, Clone)]
struct DirData {
    durable: BTreeMap<OsString, u64>,
    current: BTreeMap<OsString, u64>,
}

enum Kind {
    File(FileData),
    Dir(DirData),
}

struct Node {
    kind: Kind,
    perm: u16,
    mtime: SystemTime,
}

struct State {
    nodes: HashMap<u64, Node>,
    next_ino: u64,
    counters: Counters,
    /// The name a file was created under, for the counters and reports.
    names: HashMap<u64, OsString>,
}

impl State {
    fn new() -> Self {
        let mut nodes = HashMap::new();
        nodes.insert(
            INodeNo::ROOT.0,
            Node {
                kind: Kind::Dir(DirData::default()),
                perm: 0o755,
                mtime: SystemTime::now(),
            },
        );
        Self {
            nodes,
            next_ino: 2,
            counters: Counters::default(),
            names: HashMap::new(),
        }
    }

    fn attr(&self, ino: u64) -> Option<FileAttr> {
        let node = self.nodes.get(&ino)?;
        let (kind, size, nlink) = match &node.kind {
            Kind::File(f) => (FileType::RegularFile, f.current.len() as u64, 1),
            Kind::Dir(_) => (FileType::Directory, 0, 2),
        };
        Some(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: node.mtime,
            mtime: node.mtime,
            ctime: node.mtime,
            crtime: node.mtime,
            kind,
            perm: node.perm,
            nlink,
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
            rdev: 0,
            blksize: 4096,
            flags: 0,
        })
    }

    fn dir(&mut self, ino: u64) -> Result<&mut DirData, Errno> {
        match self.nodes.get_mut(&ino).map(|n| &mut n.kind) {
            Some(Kind::Dir(d)) => Ok(d),
            Some(_) => Err(Errno::ENOTDIR),
            None => Err(Errno::ENOENT),
        }
    }

    fn file(&mut self, ino: u64) -> Result<&mut FileData, Errno> {
        match self.nodes.get_mut(&ino).map(|n| &mut n.kind) {
            Some(Kind::File(f)) => Ok(f),
            Some(_) => Err(Errno::EISDIR),
            None => Err(Errno::ENOENT),
        }
    }

    fn lookup(&mut self, parent: u64, name: &OsStr) -> Result<u64, Errno> {
        self.dir(parent)?
            .current
            .get(name)
            .copied()
            .ok_or(Errno::ENOENT)
    }

    fn add(&mut self, parent: u64, name: &OsStr, kind: Kind, perm: u16) -> Result<u64, Errno> {
        if self.dir(parent)?.current.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        self.nodes.insert(
            ino,
            Node {
                kind,
                perm,
                mtime: SystemTime::now(),
            },
        );
        self.names.insert(ino, name.to_owned());
        self.dir(parent)?.current.insert(name.to_owned(), ino);
        Ok(ino)
    }

    fn count_write(&mut self, ino: u64, n: u64) {
        let name = self
            .names
            .get(&ino)
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let c = &mut self.counters;
        if name.ends_with("-wal") {
            c.wal_bytes += n;
        } else if name.ends_with("-shm") {
            c.shm_bytes += n;
        } else if name.ends_with(".db") {
            c.db_bytes += n;
        } else {
            c.other_bytes += n;
        }
    }

    /// The power cut: every node back to its durable state (see
    /// [`CutMode`]), then whatever no durable entry names is gone.
    fn cut(&mut self, mode: CutMode, pick: &mut dyn FnMut(u64) -> u64) -> CutReport {
        let mut report = CutReport::default();
        let named_before = self.reachable(|d| &d.current);
        let mut inos: Vec<u64> = self.nodes.keys().copied().collect();
        inos.sort_unstable();
        for ino in inos {
            let name = self.names.get(&ino).cloned().unwrap_or_default();
            let Some(node) = self.nodes.get_mut(&ino) else {
                continue;
            };
            match &mut node.kind {
                Kind::Dir(d) => d.current = d.durable.clone(),
                Kind::File(f) => {
                    let pending = std::mem::take(&mut f.pending);
                    let keep = match mode {
                        CutMode::DropAll => 0,
                        CutMode::TornPrefix if !pending.is_empty() => {
                            pick(pending.len() as u64 + 1) as usize
                        }
                        CutMode::TornPrefix => 0,
                    };
                    for (i, op) in pending.iter().enumerate() {
                        if i < keep {
                            match op {
                                Op::Write { offset, data } if i + 1 == keep => {
                                    // The last write that reached the disk,
                                    // torn: only its first sectors.
                                    let sectors = data.len().div_ceil(SECTOR) as u64;
                                    let kept =
                                        (pick(sectors + 1) as usize * SECTOR).min(data.len());
                                    if kept < data.len() {
                                        report.torn = Some(name.to_string_lossy().into_owned());
                                    }
                                    Op::Write {
                                        offset: *offset,
                                        data: data[..kept].to_vec(),
                                    }
                                    .apply(&mut f.durable);
                                    report.dropped_bytes += (data.len() - kept) as u64;
                                }
                                op => op.apply(&mut f.durable),
                            }
                        } else if let Op::Write { data, .. } = op {
                            report.dropped_bytes += data.len() as u64;
                        }
                    }
                    f.current = f.durable.clone();
                }
            }
        }
        // Keep what the root reaches through durable entries.
        let reachable = self.reachable(|d| &d.durable);
        let gone: Vec<u64> = self
            .nodes
            .keys()
            .filter(|i| !reachable.contains(i))
            .copied()
            .collect();
        for ino in gone {
            self.nodes.remove(&ino);
            let name = self.names.remove(&ino);
            if let Some(name) = name.filter(|_| named_before.contains(&ino)) {
                report.vanished.push(name.to_string_lossy().into_owned());
            }
        }
        report.vanished.sort();
        report
    }

    /// The nodes the root reaches through the entries `entries` picks.
    fn reachable(&self, entries: impl Fn(&DirData) -> &BTreeMap<OsString, u64>) -> HashSet<u64> {
        let mut reachable = HashSet::from([INodeNo::ROOT.0]);
        let mut todo = vec![INodeNo::ROOT.0];
        while let Some(ino) = todo.pop() {
            if let Some(Node {
                kind: Kind::Dir(d), ..
            }) = self.nodes.get(&ino)
            {
                for child in entries(d).values() {
                    if reachable.insert(*child) {
                        todo.push(*child);
                    }
                }
            }
        }
        reachable
    }
}

/// The file system as FUSE sees it: the shared state.
struct Fs(Arc<Mutex<State>>);

impl Fs {
    fn state(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn entry(&self, r: Result<u64, Errno>, reply: ReplyEntry) {
        let st = self.state();
        match r.map(|ino| st.attr(ino)) {
            Ok(Some(attr)) => reply.entry(&TTL, &attr, Generation(0)),
            Ok(None) => reply.error(Errno::ENOENT),
            Err(e) => reply.error(e),
        }
    }
}

impl Filesystem for Fs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let r = self.state().lookup(parent.0, name);
        self.entry(r, reply);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.state().attr(ino.0) {
            Some(a) => reply.attr(&TTL, &a),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
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
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut st = self.state();
        if let Some(size) = size {
            match st.file(ino.0) {
                Ok(f) => {
                    let op = Op::Truncate(size as usize);
                    op.apply(&mut f.current);
                    f.pending.push(op);
                }
                Err(e) => return reply.error(e),
            }
        }
        if let Some(node) = st.nodes.get_mut(&ino.0) {
            if let Some(mode) = mode {
                node.perm = (mode & 0o7777) as u16;
            }
            node.mtime = SystemTime::now();
        }
        match st.attr(ino.0) {
            Some(a) => reply.attr(&TTL, &a),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let perm = (mode & !umask & 0o7777) as u16;
        let r = self
            .state()
            .add(parent.0, name, Kind::Dir(DirData::default()), perm);
        self.entry(r, reply);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mut st = self.state();
        match st.dir(parent.0).map(|d| d.current.remove(name)) {
            Ok(Some(_)) => reply.ok(),
            Ok(None) => reply.error(Errno::ENOENT),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mut st = self.state();
        let ino = match st.lookup(parent.0, name) {
            Ok(i) => i,
            Err(e) => return reply.error(e),
        };
        match st.dir(ino) {
            Ok(d) if !d.current.is_empty() => return reply.error(Errno::ENOTEMPTY),
            Ok(_) => {}
            Err(e) => return reply.error(e),
        }
        if let Ok(d) = st.dir(parent.0) {
            d.current.remove(name);
        }
        reply.ok();
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        _flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let mut st = self.state();
        let ino = match st.lookup(parent.0, name) {
            Ok(i) => i,
            Err(e) => return reply.error(e),
        };
        if let Err(e) = st.dir(newparent.0) {
            return reply.error(e);
        }
        if let Ok(d) = st.dir(parent.0) {
            d.current.remove(name);
        }
        if let Ok(d) = st.dir(newparent.0) {
            d.current.insert(newname.to_owned(), ino);
        }
        reply.ok();
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if self.state().nodes.contains_key(&ino.0) {
            reply.opened(FileHandle(0), FopenFlags::empty());
        } else {
            reply.error(Errno::ENOENT);
        }
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
        let mut st = self.state();
        match st.file(ino.0) {
            Ok(f) => {
                let start = (offset as usize).min(f.current.len());
                let end = (start + size as usize).min(f.current.len());
                reply.data(&f.current[start..end]);
            }
            Err(e) => reply.error(e),
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
        let mut st = self.state();
        match st.file(ino.0) {
            Ok(f) => {
                let op = Op::Write {
                    offset: offset as usize,
                    data: data.to_vec(),
                };
                op.apply(&mut f.current);
                f.pending.push(op);
            }
            Err(e) => return reply.error(e),
        }
        st.count_write(ino.0, data.len() as u64);
        reply.written(data.len() as u32);
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
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
        let mut st = self.state();
        match st.file(ino.0) {
            Ok(f) => {
                for op in std::mem::take(&mut f.pending) {
                    op.apply(&mut f.durable);
                }
            }
            Err(e) => return reply.error(e),
        }
        st.counters.file_syncs += 1;
        reply.ok();
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let mut st = self.state();
        let entries: Vec<(OsString, u64)> = match st.dir(ino.0) {
            Ok(d) => d.current.iter().map(|(n, i)| (n.clone(), *i)).collect(),
            Err(e) => return reply.error(e),
        };
        let mut all = vec![
            (OsString::from("."), ino.0, FileType::Directory),
            (OsString::from(".."), ino.0, FileType::Directory),
        ];
        for (name, child) in entries {
            let kind = match st.nodes.get(&child).map(|n| &n.kind) {
                Some(Kind::Dir(_)) => FileType::Directory,
                _ => FileType::RegularFile,
            };
            all.push((name, child, kind));
        }
        for (i, (name, child, kind)) in all.into_iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(child), (i + 1) as u64, kind, &name) {
                break;
            }
        }
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let mut st = self.state();
        match st.dir(ino.0) {
            Ok(d) => d.durable = d.current.clone(),
            Err(e) => return reply.error(e),
        }
        st.counters.dir_syncs += 1;
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        // 4 GiB, mostly free.
        reply.statfs(1 << 20, 1 << 19, 1 << 19, 1 << 16, 1 << 15, 4096, 255, 4096);
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        reply.ok();
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let perm = (mode & !umask & 0o7777) as u16;
        let mut st = self.state();
        let r = st.add(parent.0, name, Kind::File(FileData::default()), perm);
        match r.map(|ino| st.attr(ino)) {
            Ok(Some(attr)) => reply.created(
                &TTL,
                &attr,
                Generation(0),
                FileHandle(0),
                FopenFlags::empty(),
            ),
            Ok(None) => reply.error(Errno::ENOENT),
            Err(e) => reply.error(e),
        }
    }
}

/// The simulator mounted at a directory; unmounted when dropped.
pub struct CutFs {
    state: Arc<Mutex<State>>,
    at: PathBuf,
    session: Option<fuser::BackgroundSession>,
}

impl CutFs {
    /// Mount an empty file system at `at` (an existing directory). Needs
    /// root (as CI runs), for the mount.
    pub fn mount(at: &Path) -> Self {
        let mut fs = Self {
            state: Arc::new(Mutex::new(State::new())),
            at: at.to_path_buf(),
            session: None,
        };
        fs.attach();
        // The root exists durably from the start, as a mount point does.
        fs.sync_dir(at);
        fs
    }

    fn attach(&mut self) {
        let mut config = fuser::Config::default();
        config.mount_options = vec![
            fuser::MountOption::FSName("ferry-cutfs".into()),
            fuser::MountOption::RW,
        ];
        config.acl = fuser::SessionACL::All;
        let session =
            fuser::spawn_mount(Fs(self.state.clone()), &self.at, &config).unwrap_or_else(|e| {
                panic!(
                    "cannot mount the power-cut file system at {} ({e}); \
                     it needs /dev/fuse and root, as in CI",
                    self.at.display()
                )
            });
        self.session = Some(session);
    }

    fn detach(&mut self) {
        let Some(session) = self.session.take() else {
            return;
        };
        // A process forked by another test thread holds copies of open
        // descriptors until it execs: busy for a moment, then free.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            match nix::mount::umount2(&self.at, nix::mount::MntFlags::empty()) {
                Ok(()) => break,
                Err(nix::errno::Errno::EBUSY) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => panic!(
                    "cannot unmount the power-cut file system at {}: {e}",
                    self.at.display()
                ),
            }
        }
        // Unmounted: the session's loop ends. Its last read of /dev/fuse
        // may say ECONNABORTED instead of ENODEV (the kernel tore the
        // connection down at the unmount): ended all the same, and every
        // write it answered was already applied to the backing state.
        match session.join() {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionAborted => {}
            Err(e) => panic!("stop the power-cut file system: {e}"),
        }
    }

    /// `fsync` a directory on the mount (what a test does for what it
    /// made itself).
    pub fn sync_dir(&self, dir: &Path) {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .unwrap_or_else(|e| panic!("fsync {}: {e}", dir.display()));
    }

    /// The power cut. Whatever ran on the mount must be dead already (its
    /// writes in flight would land after the cut otherwise).
    pub fn cut(&mut self, mode: CutMode, pick: &mut dyn FnMut(u64) -> u64) -> CutReport {
        self.detach();
        let report = self
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .cut(mode, pick);
        self.attach();
        report
    }

    pub fn counters(&self) -> Counters {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .counters
    }
}

impl Drop for CutFs {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            // Lazily, and without waiting for the session to end: a
            // panicking test may still hold files open on it.
            let _ = nix::mount::umount2(&self.at, nix::mount::MntFlags::MNT_DETACH);
            drop(s);
        }
    }
}
