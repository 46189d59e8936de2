//! A power cut loses nothing herald acknowledged. herald's data directory lives on a small FUSE
//! file system written for this test, which models what a disk keeps when the power goes: a
//! file's bytes as of its last `fsync`/`fdatasync`, a directory's entries as of its last `fsync`.
//! Everything else — written, even `sync_file_range`d (a no-op to FUSE, as it does not make data
//! durable) — is lost by the "cut": herald is killed, the file system is unmounted, and mounted
//! again from only what was synced. Every event answered `201` must then be there.
//!
//! Needs FUSE (`/dev/fuse`) and the right to mount (root). Set `HERALD_SKIP_FUSE=1` to skip
//! deliberately; otherwise a missing FUSE is a failure.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    FileAttr, FileType, Filesystem, MountOption, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyWrite, Request, TimeOrNow,
};

use common::*;

const ROOT: u64 = 1;
const TTL: Duration = Duration::ZERO;

#[derive(Clone, Debug)]
enum Node {
    File(Vec<u8>),
    Dir(BTreeMap<OsString, u64>),
}

/// What processes see (`live`) and what a power cut leaves (`durable`), per inode.
struct Disk {
    live: HashMap<u64, Node>,
    durable: HashMap<u64, Node>,
    next: u64,
}

impl Disk {
    fn new() -> Disk {
        let root = Node::Dir(BTreeMap::new());
        Disk {
            live: HashMap::from([(ROOT, root.clone())]),
            durable: HashMap::from([(ROOT, root)]),
            next: ROOT + 1,
        }
    }

    /// The disk after a power cut: from the root, every durable entry, with its node's durable
    /// content (a file never synced is empty; a directory never synced has no entries).
    fn after_cut(&self) -> Disk {
        let mut live = HashMap::new();
        let mut todo = vec![(ROOT, true)];
        while let Some((ino, is_dir)) = todo.pop() {
            let node = match self.durable.get(&ino) {
                Some(node) => node.clone(),
                None if is_dir => Node::Dir(BTreeMap::new()),
                None => Node::File(Vec::new()),
            };
            if let Node::Dir(entries) = &node {
                for child in entries.values() {
                    let child_is_dir = matches!(self.live.get(child), Some(Node::Dir(_)))
                        || matches!(self.durable.get(child), Some(Node::Dir(_)));
                    todo.push((*child, child_is_dir));
                }
            }
            live.insert(ino, node);
        }
        Disk {
            durable: live.clone(),
            live,
            next: self.next,
        }
    }

    fn attr(&self, ino: u64) -> Option<FileAttr> {
        let (kind, size, perm) = match self.live.get(&ino)? {
            Node::File(data) => (FileType::RegularFile, data.len() as u64, 0o644),
            Node::Dir(_) => (FileType::Directory, 0, 0o755),
        };
        Some(FileAttr {
            ino,
            size,
            blocks: size.div_ceil(512),
            atime: UNIX_EPOCH,
            mtime: UNIX_EPOCH,
            ctime: UNIX_EPOCH,
            crtime: UNIX_EPOCH,
            kind,
            perm,
            nlink: 1,
            uid: 0,
            gid: 0,
            rdev: 0,
            flags: 0,
            blksize: 4096,
        })
    }

    fn entries(&mut self, ino: u64) -> Option<&mut BTreeMap<OsString, u64>> {
        match self.live.get_mut(&ino)? {
            Node::Dir(entries) => Some(entries),
            Node::File(_) => None,
        }
    }

    fn data(&mut self, ino: u64) -> Option<&mut Vec<u8>> {
        match self.live.get_mut(&ino)? {
            Node::File(data) => Some(data),
            Node::Dir(_) => None,
        }
    }

    fn add(&mut self, parent: u64, name: &OsStr, node: Node) -> Result<FileAttr, i32> {
        let ino = self.next;
        let entries = self.entries(parent).ok_or(libc::ENOTDIR)?;
        if entries.contains_key(name) {
            return Err(libc::EEXIST);
        }
        entries.insert(name.to_owned(), ino);
        self.next += 1;
        self.live.insert(ino, node);
        self.attr(ino).ok_or(libc::EIO)
    }

    /// A synced node: its content (a file's bytes, a directory's entries) survives a cut.
    fn sync(&mut self, ino: u64) {
        if let Some(node) = self.live.get(&ino) {
            self.durable.insert(ino, node.clone());
        }
    }
}

#[derive(Clone)]
struct CutFs(Arc<Mutex<Disk>>);

impl CutFs {
    fn disk(&self) -> std::sync::MutexGuard<'_, Disk> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Filesystem for CutFs {
    fn lookup(&mut self, _: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        let mut disk = self.disk();
        let ino = disk.entries(parent).and_then(|e| e.get(name).copied());
        match ino.and_then(|ino| disk.attr(ino)) {
            Some(attr) => reply.entry(&TTL, &attr, 0),
            None => reply.error(libc::ENOENT),
        }
    }

    fn getattr(&mut self, _: &Request<'_>, ino: u64, _: Option<u64>, reply: ReplyAttr) {
        match self.disk().attr(ino) {
            Some(attr) => reply.attr(&TTL, &attr),
            None => reply.error(libc::ENOENT),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn setattr(
        &mut self,
        _: &Request<'_>,
        ino: u64,
        _: Option<u32>,
        _: Option<u32>,
        _: Option<u32>,
        size: Option<u64>,
        _: Option<TimeOrNow>,
        _: Option<TimeOrNow>,
        _: Option<SystemTime>,
        _: Option<u64>,
        _: Option<SystemTime>,
        _: Option<SystemTime>,
        _: Option<SystemTime>,
        _: Option<u32>,
        reply: ReplyAttr,
    ) {
        let mut disk = self.disk();
        if let (Some(size), Some(data)) = (size, disk.data(ino)) {
            data.resize(size as usize, 0);
        }
        match disk.attr(ino) {
            Some(attr) => reply.attr(&TTL, &attr),
            None => reply.error(libc::ENOENT),
        }
    }

    fn mkdir(
        &mut self,
        _: &Request<'_>,
        parent: u64,
        name: &OsStr,
        _: u32,
        _: u32,
        reply: ReplyEntry,
    ) {
        match self.disk().add(parent, name, Node::Dir(BTreeMap::new())) {
            Ok(attr) => reply.entry(&TTL, &attr, 0),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &mut self,
        _: &Request<'_>,
        parent: u64,
        name: &OsStr,
        _: u32,
        _: u32,
        _: i32,
        reply: ReplyCreate,
    ) {
        match self.disk().add(parent, name, Node::File(Vec::new())) {
            Ok(attr) => reply.created(&TTL, &attr, 0, 0, 0),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&mut self, _: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        match self.disk().entries(parent).and_then(|e| e.remove(name)) {
            Some(_) => reply.ok(),
            None => reply.error(libc::ENOENT),
        }
    }

    fn rmdir(&mut self, req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        self.unlink(req, parent, name, reply)
    }

    fn rename(
        &mut self,
        _: &Request<'_>,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
        _: u32,
        reply: ReplyEmpty,
    ) {
        let mut disk = self.disk();
        let Some(ino) = disk.entries(parent).and_then(|e| e.remove(name)) else {
            return reply.error(libc::ENOENT);
        };
        match disk.entries(new_parent) {
            Some(entries) => {
                entries.insert(new_name.to_owned(), ino);
                reply.ok()
            }
            None => reply.error(libc::ENOTDIR),
        }
    }

    fn open(&mut self, _: &Request<'_>, _: u64, _: i32, reply: ReplyOpen) {
        // Direct I/O: every write reaches the model at once, nothing waits in the kernel.
        reply.opened(0, fuser::consts::FOPEN_DIRECT_IO);
    }

    #[allow(clippy::too_many_arguments)]
    fn read(
        &mut self,
        _: &Request<'_>,
        ino: u64,
        _: u64,
        offset: i64,
        size: u32,
        _: i32,
        _: Option<u64>,
        reply: ReplyData,
    ) {
        match self.disk().data(ino) {
            Some(data) => {
                let start = (offset as usize).min(data.len());
                let end = (start + size as usize).min(data.len());
                reply.data(&data[start..end])
            }
            None => reply.error(libc::EISDIR),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn write(
        &mut self,
        _: &Request<'_>,
        ino: u64,
        _: u64,
        offset: i64,
        bytes: &[u8],
        _: u32,
        _: i32,
        _: Option<u64>,
        reply: ReplyWrite,
    ) {
        match self.disk().data(ino) {
            Some(data) => {
                let end = offset as usize + bytes.len();
                if data.len() < end {
                    data.resize(end, 0);
                }
                data[offset as usize..end].copy_from_slice(bytes);
                reply.written(bytes.len() as u32)
            }
            None => reply.error(libc::EISDIR),
        }
    }

    fn flush(&mut self, _: &Request<'_>, _: u64, _: u64, _: u64, reply: ReplyEmpty) {
        reply.ok()
    }

    fn fsync(&mut self, _: &Request<'_>, ino: u64, _: u64, _: bool, reply: ReplyEmpty) {
        self.disk().sync(ino);
        reply.ok()
    }

    fn fsyncdir(&mut self, _: &Request<'_>, ino: u64, _: u64, _: bool, reply: ReplyEmpty) {
        self.disk().sync(ino);
        reply.ok()
    }

    fn readdir(
        &mut self,
        _: &Request<'_>,
        ino: u64,
        _: u64,
        offset: i64,
        mut reply: ReplyDirectory,
    ) {
        let mut disk = self.disk();
        let Some(entries) = disk.entries(ino).cloned() else {
            return reply.error(libc::ENOTDIR);
        };
        let kinds: Vec<_> = entries
            .iter()
            .map(|(name, ino)| {
                let kind = match disk.live.get(ino) {
                    Some(Node::Dir(_)) => FileType::Directory,
                    _ => FileType::RegularFile,
                };
                (*ino, kind, name.clone())
            })
            .collect();
        for (i, (ino, kind, name)) in kinds.into_iter().enumerate().skip(offset as usize) {
            if reply.add(ino, (i + 1) as i64, kind, name) {
                break;
            }
        }
        reply.ok()
    }

    fn access(&mut self, _: &Request<'_>, _: u64, _: i32, reply: ReplyEmpty) {
        reply.ok()
    }

    fn fallocate(
        &mut self,
        _: &Request<'_>,
        ino: u64,
        _: u64,
        offset: i64,
        length: i64,
        _: i32,
        reply: ReplyEmpty,
    ) {
        if let Some(data) = self.disk().data(ino) {
            let end = (offset + length) as usize;
            if data.len() < end {
                data.resize(end, 0);
            }
        }
        reply.ok()
    }
}

fn mount(fs: &CutFs, at: &Path) -> fuser::BackgroundSession {
    fuser::spawn_mount2(
        fs.clone(),
        at,
        &[MountOption::FSName("herald-cutfs".into())],
    )
    .expect("mount the FUSE file system (needs /dev/fuse and root)")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_power_cut_loses_no_acknowledged_event() {
    publish_then_cut_the_power(0, false).await;
}

/// The same in a segment of the write-ahead log prepared ahead (written with zeros on its own
/// thread, then renamed into the log): the events acknowledged in it are written over zeros.
#[tokio::test(flavor = "multi_thread")]
async fn a_power_cut_loses_no_acknowledged_event_in_a_prepared_log_segment() {
    publish_then_cut_the_power(0, true).await;
}

/// Publishes 60 events of `padding` bytes and more (30 one by one, 30 at once), cuts the power,
/// and checks that every acknowledged event is there afterwards. With `prepared`, first fills
/// the log's first segment until the next one is prepared, so the 60 go to that one.
async fn publish_then_cut_the_power(padding: usize, prepared: bool) {
    if std::env::var_os("HERALD_SKIP_FUSE").is_some() {
        eprintln!("HERALD_SKIP_FUSE is set: the power-cut test was not run");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let at = dir.path().join("mnt");
    std::fs::create_dir(&at).unwrap();
    let fs = CutFs(Arc::new(Mutex::new(Disk::new())));
    let session = mount(&fs, &at);
    let data = at.join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::File::open(&at).unwrap().sync_all().unwrap();

    let pad = "x".repeat(padding);
    // Acknowledged events, one by one and concurrently, then the cut.
    let mut server = Server::start_on(&data, &[]);
    let mut acked = Vec::new();
    if prepared {
        let filler = "f".repeat(60_000);
        for _ in 0..20 {
            publish(&server, "filler", &filler).await;
        }
        let next = data.join("wal").join("next.tmp");
        let started = std::time::Instant::now();
        while std::fs::metadata(&next).map_or(0, |m| m.len()) < 16 << 20 {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the next log segment was not prepared"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    for i in 0..30 {
        acked.push((
            publish(&server, "kept", &format!("{pad}one by one {i}")).await,
            i,
        ));
    }
    let together: Vec<String> = (30..60).map(|i| format!("{pad}together {i}")).collect();
    let ids = futures::future::join_all(together.iter().map(|d| publish(&server, "kept", d))).await;
    acked.extend(ids.into_iter().zip(30..));
    if prepared {
        let segments = std::fs::read_dir(data.join("wal")).unwrap().count();
        assert_eq!(segments, 2, "the events went to the prepared segment");
    }
    if padding > 16_000 {
        // sled gets the events at the next checkpoint (within a second); from then on they
        // are kept in its blob files, not in the write-ahead log.
        let started = std::time::Instant::now();
        while std::fs::read_dir(data.join("blobs")).map_or(0, |d| d.count()) == 0 {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "events this large are kept in sled's blob files"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    server.kill9();
    drop(session);

    let cut = CutFs(Arc::new(Mutex::new(fs.disk().after_cut())));
    let _session = mount(&cut, &at);
    let server = Server::start_on(&data, &[]);
    let (status, page) = get_json(&server, "/streams/kept/events?after=0&limit=1000").await;
    assert_eq!(status, 200, "{page}");
    let kept: HashMap<u64, String> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (id_of(&e["id"]), e["data"].as_str().unwrap().to_string()))
        .collect();
    for (id, i) in &acked {
        let data = kept.get(id).unwrap_or_else(|| {
            panic!(
                "event {id} (#{i}) was acknowledged and is gone after the cut; kept: {:?}",
                kept.keys().collect::<std::collections::BTreeSet<_>>()
            )
        });
        assert!(
            data.ends_with(&format!(" {i}")) && data.len() > padding,
            "event {id}"
        );
    }
    // And the next id is above every id handed out.
    let next = publish(&server, "kept", "after the cut").await;
    assert!(acked.iter().all(|(id, _)| *id < next));
}

/// Events of 20 KB: sled keeps the tree nodes that hold them in files of their own under
/// `blobs/`, which sled itself never syncs. The cut comes after a checkpoint stored them there.
#[tokio::test(flavor = "multi_thread")]
async fn a_power_cut_loses_no_acknowledged_large_event() {
    publish_then_cut_the_power(20_000, false).await;
}
