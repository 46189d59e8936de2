//! herald's write-ahead log: what makes a durable `201` cost one append and one `fdatasync`.
//!
//! The writer thread appends each committed group here as one record and syncs the file before
//! anything is acknowledged; sled, which keeps the log for reading, is written on the same
//! thread but flushed only at a checkpoint (every second or so), off the acknowledgement path.
//! A checkpoint records in sled how far the log had got, then flushes sled; at start-up the
//! records from that point on are replayed into sled (what sled already holds is skipped), so
//! nothing acknowledged depends on sled's own flush.
//!
//! The log is a directory of segment files, each named by the position (the byte offset over
//! the whole log) of its first record. A record is its payload's length (`u32`, little endian),
//! the payload's CRC-32, and the payload. A record cut short or whose checksum fails ends the
//! log: it was being written when the process or the machine stopped, so it was never
//! acknowledged, and it is cut off before anything new is appended.
//!
//! Segments are written with zeros ahead of use, on their own thread, so an append overwrites
//! blocks the file already has and its sync flushes only data (a length of zero ends the log,
//! as it does in a segment not yet written to the end).

use std::borrow::Borrow;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::broker::engine::IdempotencyKey;
use crate::broker::event::{Event, EventId, EventType, StreamName};

/// A segment is closed and a new one started once it holds this much.
const SEGMENT_BYTES: u64 = 16 << 20;
/// A segment that grows as it is written (the first of a new log, or one cut after a crash)
/// has the next, prepared one made once it holds this much: enough that a short-lived log (a
/// test's, a quiet server's) never writes a segment of zeros, soon enough that a busy one
/// spends few appends on a growing file.
const PREPARE_AFTER: u64 = 1 << 20;
/// Record header: length and CRC-32.
const HEADER: usize = 8;
/// A length beyond this is damage, not a record (a group is at most a few MiB).
const MAX_RECORD: usize = 1 << 30;
/// The next segment while it is being prepared; never read as part of the log.
const PREPARED: &str = "next.tmp";

/// The log's directory inside the data directory.
pub(crate) const WAL_DIR: &str = "wal";

pub(crate) struct Wal {
    dir: PathBuf,
    /// A segment is closed once it holds this much.
    segment_bytes: u64,
    /// The segment being appended to, the position of its first byte, and its file's length:
    /// records written below that length overwrite zeros, so their sync writes no metadata.
    file: File,
    segment: u64,
    file_len: u64,
    /// Where the next record goes.
    end: u64,
    /// Whether bytes were appended since the last sync.
    unsynced: bool,
    /// The next segment, being filled with zeros on its own thread.
    next: Option<Preparing>,
    /// No segment is prepared before this position (after a failure, a segment's worth on).
    prepare_from: u64,
}

/// A segment being written with zeros ahead of its use. Every record then lands on blocks the
/// file already has, so its `fdatasync` flushes the data alone; appending to a growing file
/// makes each sync write the inode (and allocate blocks) too, a third more time per sync on
/// the machines measured (BENCHMARKS.md).
struct Preparing {
    thread: JoinHandle<io::Result<(File, u64)>>,
    cancel: Arc<AtomicBool>,
}

impl Preparing {
    fn start(dir: &Path, bytes: u64) -> io::Result<Preparing> {
        let cancel = Arc::new(AtomicBool::new(false));
        let path = dir.join(PREPARED);
        let stop = cancel.clone();
        let thread = std::thread::Builder::new()
            .name("herald-wal-prepare".into())
            .spawn(move || prepare(&path, bytes, &stop))?;
        Ok(Preparing { thread, cancel })
    }

    /// The prepared file and its length, once it is ready.
    fn wait(self) -> io::Result<(File, u64)> {
        self.thread.join().unwrap_or_else(|_| {
            Err(io::Error::other(
                "the thread preparing a log segment panicked",
            ))
        })
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        if let Some(next) = &self.next {
            next.cancel.store(true, Ordering::Relaxed);
        }
    }
}

/// Writes `bytes` of zeros to a new file at `path` and makes them durable, a MiB at a time so
/// the device's queue never holds much of it ahead of the writer's syncs.
fn prepare(path: &Path, bytes: u64, cancel: &AtomicBool) -> io::Result<(File, u64)> {
    const CHUNK: usize = 1 << 20;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    let zeros = vec![0u8; CHUNK];
    let mut at = 0;
    while at < bytes {
        if cancel.load(Ordering::Relaxed) {
            return Err(io::Error::other("the log was closed"));
        }
        let n = (bytes - at).min(CHUNK as u64) as usize;
        file.write_all_at(&zeros[..n], at)?;
        file.sync_data()?;
        at += n as u64;
    }
    // The length, in the inode.
    file.sync_all()?;
    Ok((file, bytes))
}

fn segment_name(start: u64) -> String {
    format!("{start:020}.wal")
}

/// The log's segments, by start position.
fn segments(dir: &Path) -> io::Result<Vec<u64>> {
    let mut starts = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let Some(start) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".wal"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        starts.push(start);
    }
    starts.sort_unstable();
    Ok(starts)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Wal {
    /// Opens the log in `dir` (creating it), reads every whole record from position `from` on
    /// and hands each to `replay` in order, cuts off a torn tail, and is then ready to append.
    /// Segments wholly before `from` are left for [`forget_before`].
    pub(crate) fn open(
        dir: &Path,
        from: u64,
        mut replay: impl FnMut(u64, &[u8]) -> io::Result<()>,
    ) -> io::Result<Wal> {
        if !dir.is_dir() {
            std::fs::create_dir_all(dir)?;
            // The new directory's entry in its parent, so a power cut cannot lose the log.
            if let Some(parent) = dir.parent() {
                sync_dir(parent)?;
            }
        }
        // A segment left half prepared by the last run is made again when it is needed.
        match std::fs::remove_file(dir.join(PREPARED)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let starts = segments(dir)?;
        let mut end = from;
        // The segment holding `from`, and every later one.
        let first = starts.iter().rposition(|&s| s <= from).unwrap_or(0);
        let mut last: Option<(u64, File, u64)> = None;
        for (i, &start) in starts.iter().enumerate().skip(first) {
            let is_last = i + 1 == starts.len();
            let path = dir.join(segment_name(start));
            let mut file = OpenOptions::new().read(true).write(true).open(&path)?;
            if start > end {
                // Records are whole in themselves (they carry their ids), so what follows a
                // gap is replayed all the same.
                tracing::error!(segment = %path.display(), missing_from = end, "the write-ahead log has a gap before this segment");
                end = start;
            }
            let whole = read_records(&mut file, end - start, |offset, payload| {
                replay(start + offset, payload)
            })?;
            let mut len = file.metadata()?.len();
            // After the last whole record: the zeros of a prepared segment, or what a crash
            // left of records never acknowledged.
            if whole < len && !zeros_from(&mut file, whole)? {
                if is_last {
                    // Cut off, so no byte of it can ever be read as part of the log again.
                    file.set_len(whole)?;
                    file.sync_all()?;
                    len = whole;
                } else {
                    tracing::error!(segment = %path.display(), at = whole, "a damaged write-ahead log record; the records after it in this segment cannot be read");
                }
            }
            end = end.max(start + whole);
            if is_last && start + whole == end {
                last = Some((start, file, len));
            }
        }
        let (segment, file, file_len) = match last {
            Some(last) => last,
            // No segment yet, or the last one ends before the position the store recorded.
            None => (end, create_segment(dir, end)?, 0),
        };
        Ok(Wal {
            dir: dir.to_path_buf(),
            segment_bytes: SEGMENT_BYTES,
            file,
            segment,
            file_len,
            end,
            unsynced: false,
            next: None,
            prepare_from: 0,
        })
    }

    /// The position after the last record appended.
    pub(crate) fn end(&self) -> u64 {
        self.end
    }

    /// Appends one record (not yet durable: see [`Wal::sync`]).
    pub(crate) fn append(&mut self, payload: &[u8]) -> io::Result<()> {
        if payload.is_empty() || payload.len() > MAX_RECORD {
            // A zero length is where the log ends (it is what a prepared segment holds).
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a record must hold 1 byte to 1 GiB",
            ));
        }
        let mut record = Vec::with_capacity(HEADER + payload.len());
        record.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        record.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
        record.extend_from_slice(payload);
        let written = self.end - self.segment;
        let grows = written + record.len() as u64 > self.file_len;
        if written >= self.segment_bytes {
            let prepared = self.take_prepared();
            self.roll(prepared)?;
        } else if grows && self.next.as_ref().is_some_and(|n| n.thread.is_finished()) {
            // Out of zeros (or never had any), and the next segment is ready: go on there.
            if let Some(prepared) = self.take_prepared() {
                self.roll(Some(prepared))?;
            }
        }
        let at = self.end - self.segment;
        if let Err(e) = self.file.write_all_at(&record, at) {
            // Whatever part went out is zeroed again, so nothing of it can be read as a record.
            let _ = self.file.write_all_at(&vec![0; record.len()], at);
            return Err(e);
        }
        self.end += record.len() as u64;
        self.file_len = self.file_len.max(at + record.len() as u64);
        self.unsynced = true;
        let written = self.end - self.segment;
        let prepared = self.file_len > written;
        if self.next.is_none()
            && self.end >= self.prepare_from
            && ((prepared && written >= self.segment_bytes / 2)
                || (!prepared && written >= PREPARE_AFTER.min(self.segment_bytes / 2)))
        {
            // Without the thread, the next segment is made when it is needed (see `roll`).
            self.next = Preparing::start(&self.dir, self.segment_bytes)
                .inspect_err(|e| tracing::warn!(error = %e, "could not start preparing the next log segment"))
                .ok();
        }
        Ok(())
    }

    /// The next segment, once prepared (waiting for it if need be); `None` if none was being
    /// prepared or preparing it failed (then it is tried again a segment's worth later).
    fn take_prepared(&mut self) -> Option<(File, u64)> {
        match self.next.take().map(Preparing::wait)? {
            Ok(prepared) => Some(prepared),
            Err(e) => {
                tracing::warn!(error = %e, "preparing a log segment failed; the log goes on in segments that grow as they are written");
                let _ = std::fs::remove_file(self.dir.join(PREPARED));
                self.prepare_from = self.end + self.segment_bytes;
                None
            }
        }
    }

    /// Closes the current segment and goes on in the next: `prepared` if given, else a new
    /// growing file.
    fn roll(&mut self, prepared: Option<(File, u64)>) -> io::Result<()> {
        // The old segment must be whole on disk before a new one can count.
        self.sync()?;
        let (file, len) = match prepared {
            Some((file, len)) => {
                std::fs::rename(
                    self.dir.join(PREPARED),
                    self.dir.join(segment_name(self.end)),
                )?;
                sync_dir(&self.dir)?;
                (file, len)
            }
            None => (create_segment(&self.dir, self.end)?, 0),
        };
        self.file = file;
        self.file_len = len;
        self.segment = self.end;
        Ok(())
    }

    /// Makes every record appended so far durable: one `fdatasync`.
    pub(crate) fn sync(&mut self) -> io::Result<()> {
        if self.unsynced {
            self.file.sync_data()?;
            self.unsynced = false;
        }
        Ok(())
    }

    /// The log's directory.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Whether `file` holds nothing but zeros from `offset` to its end.
fn zeros_from(file: &mut File, offset: u64) -> io::Result<bool> {
    file.seek(SeekFrom::Start(offset))?;
    let mut chunk = vec![0u8; 1 << 20];
    loop {
        match file.read(&mut chunk) {
            Ok(0) => return Ok(true),
            Ok(n) => {
                if chunk[..n].iter().any(|&b| b != 0) {
                    return Ok(false);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Removes the segments of the log in `dir` that end at or before `position` (their records
/// are all in the store, flushed). The segment being appended to is never one of them: no
/// segment follows it.
pub(crate) fn forget_before(dir: &Path, position: u64) -> io::Result<()> {
    let starts = segments(dir)?;
    let mut removed = false;
    for pair in starts.windows(2) {
        let (start, next) = (pair[0], pair[1]);
        if next <= position {
            std::fs::remove_file(dir.join(segment_name(start)))?;
            removed = true;
        }
    }
    if removed {
        sync_dir(dir)?;
    }
    Ok(())
}

/// One committed group, as a record holds it: the events with their ids, and each request's
/// size and idempotency key (so a replay stores the keys' answers too).
pub(crate) struct Group {
    pub time: u64,
    pub shape: Vec<(usize, Option<IdempotencyKey>)>,
    pub events: Vec<Event>,
}

impl Group {
    /// The record's bytes: the time; each request's size and key; each event's id, stream,
    /// type and data (lengths first, little endian).
    pub(crate) fn encode(
        time: u64,
        shape: &[(usize, Option<IdempotencyKey>)],
        events: &[impl Borrow<Event>],
    ) -> Vec<u8> {
        let size: usize = events
            .iter()
            .map(|e| {
                let e = e.borrow();
                22 + e.stream.as_str().len()
                    + e.data.len()
                    + e.kind.as_ref().map_or(0, |k| k.as_str().len())
            })
            .sum();
        let mut out = Vec::with_capacity(16 + shape.len() * 8 + size);
        out.extend_from_slice(&time.to_le_bytes());
        out.extend_from_slice(&(shape.len() as u32).to_le_bytes());
        for (count, key) in shape {
            out.extend_from_slice(&(*count as u32).to_le_bytes());
            put_str(&mut out, key.as_ref().map_or("", IdempotencyKey::as_str));
        }
        out.extend_from_slice(&(events.len() as u32).to_le_bytes());
        for event in events {
            let event = event.borrow();
            out.extend_from_slice(&event.id.0.to_le_bytes());
            put_str(&mut out, event.stream.as_str());
            put_str(&mut out, event.kind.as_ref().map_or("", EventType::as_str));
            out.extend_from_slice(&(event.data.len() as u32).to_le_bytes());
            out.extend_from_slice(event.data.as_bytes());
        }
        out
    }

    /// Reads a record back; an error means the record is not one this version wrote.
    pub(crate) fn decode(bytes: &[u8]) -> io::Result<Group> {
        let mut input = Input(bytes);
        let time = input.u64()?;
        let requests = input.u32()? as usize;
        let mut shape = Vec::with_capacity(requests.min(bytes.len()));
        for _ in 0..requests {
            let count = input.u32()? as usize;
            let key = match input.str16()? {
                "" => None,
                key => Some(IdempotencyKey::new(key).map_err(invalid)?),
            };
            shape.push((count, key));
        }
        let count = input.u32()? as usize;
        let mut events = Vec::with_capacity(count.min(bytes.len()));
        for _ in 0..count {
            let id = EventId(input.u64()?);
            let stream = StreamName::new(input.str16()?).map_err(invalid)?;
            let kind = match input.str16()? {
                "" => None,
                kind => Some(EventType::new(kind).map_err(invalid)?),
            };
            let len = input.u32()? as usize;
            let data = std::str::from_utf8(input.take(len)?).map_err(invalid)?;
            events.push(Event::new(id, stream, kind, data.to_owned(), time));
        }
        Ok(Group {
            time,
            shape,
            events,
        })
    }
}

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("a write-ahead log record does not decode: {e}"),
    )
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    // Stream names, event types and keys are far shorter than 64 KiB (they are validated).
    out.extend_from_slice(&(s.len() as u16).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn take(&mut self, n: usize) -> io::Result<&'a [u8]> {
        if self.0.len() < n {
            return Err(invalid("it ends early"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u64(&mut self) -> io::Result<u64> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(b))
    }

    fn u32(&mut self) -> io::Result<u32> {
        let mut b = [0u8; 4];
        b.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(b))
    }

    fn str16(&mut self) -> io::Result<&'a str> {
        let mut b = [0u8; 2];
        b.copy_from_slice(self.take(2)?);
        let len = u16::from_le_bytes(b) as usize;
        std::str::from_utf8(self.take(len)?).map_err(invalid)
    }
}

/// A new, empty segment starting at `start`, its directory entry durable.
fn create_segment(dir: &Path, start: u64) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(dir.join(segment_name(start)))?;
    file.sync_all()?;
    sync_dir(dir)?;
    Ok(file)
}

/// Reads the whole records of `file` from byte `skip` on, handing each (with its offset in the
/// file) to `each`; returns the offset after the last whole one.
fn read_records(
    file: &mut File,
    skip: u64,
    mut each: impl FnMut(u64, &[u8]) -> io::Result<()>,
) -> io::Result<u64> {
    file.seek(SeekFrom::Start(skip))?;
    let mut reader = io::BufReader::with_capacity(1 << 20, &mut *file);
    let mut offset = skip;
    let mut payload = Vec::new();
    loop {
        let mut header = [0u8; HEADER];
        if !read_whole(&mut reader, &mut header)? {
            return Ok(offset);
        }
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if len == 0 || len > MAX_RECORD {
            // Zero: the unwritten rest of a prepared segment.
            return Ok(offset);
        }
        payload.resize(len, 0);
        if !read_whole(&mut reader, &mut payload)? || crc32fast::hash(&payload) != crc {
            return Ok(offset);
        }
        each(offset, &payload)?;
        offset += (HEADER + len) as u64;
    }
}

/// Fills `buf`, or returns false if the file ends first.
fn read_whole(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<bool> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => return Ok(false),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn replayed(dir: &Path, from: u64) -> (Vec<(u64, Vec<u8>)>, Wal) {
        let mut seen = Vec::new();
        let wal = Wal::open(dir, from, |at, payload| {
            seen.push((at, payload.to_vec()));
            Ok(())
        })
        .unwrap();
        (seen, wal)
    }

    #[test]
    fn records_come_back_in_order_from_any_record() {
        let dir = tempfile::tempdir().unwrap();
        let (none, mut wal) = replayed(dir.path(), 0);
        assert!(none.is_empty());
        let mut positions = Vec::new();
        for i in 0..100u32 {
            positions.push(wal.end());
            wal.append(&i.to_le_bytes().repeat(i as usize + 1)).unwrap();
        }
        wal.sync().unwrap();
        drop(wal);
        let (all, wal) = replayed(dir.path(), 0);
        assert_eq!(all.len(), 100);
        assert_eq!(all.iter().map(|(at, _)| *at).collect::<Vec<_>>(), positions);
        assert_eq!(all[7].1, 7u32.to_le_bytes().repeat(8));
        let end = wal.end();
        drop(wal);
        let (rest, wal) = replayed(dir.path(), positions[60]);
        assert_eq!(rest.len(), 40);
        assert_eq!(rest[0].0, positions[60]);
        assert_eq!(wal.end(), end);
    }

    #[test]
    fn a_torn_tail_ends_the_log_and_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let (_, mut wal) = replayed(dir.path(), 0);
        wal.append(b"one").unwrap();
        wal.append(b"two").unwrap();
        wal.sync().unwrap();
        let whole = wal.end();
        drop(wal);
        let path = dir.path().join(segment_name(0));
        // Half a record, as a crash in the middle of a write leaves it.
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(&[5, 0, 0, 0, 1, 2]).unwrap();
        drop(file);
        let (seen, mut wal) = replayed(dir.path(), 0);
        assert_eq!(seen.len(), 2);
        assert_eq!(wal.end(), whole);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), whole);
        wal.append(b"three").unwrap();
        wal.sync().unwrap();
        drop(wal);
        let (seen, _) = replayed(dir.path(), 0);
        let payloads: Vec<&[u8]> = seen.iter().map(|(_, p)| p.as_slice()).collect();
        assert_eq!(payloads, [&b"one"[..], b"two", b"three"]);
    }

    #[test]
    fn a_damaged_record_ends_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let (_, mut wal) = replayed(dir.path(), 0);
        wal.append(b"one").unwrap();
        let second = wal.end();
        wal.append(b"two").unwrap();
        wal.append(b"six").unwrap();
        wal.sync().unwrap();
        drop(wal);
        let path = dir.path().join(segment_name(0));
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[second as usize + HEADER] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
        let (seen, wal) = replayed(dir.path(), 0);
        assert_eq!(seen.len(), 1);
        assert_eq!(wal.end(), second);
    }

    /// A segment gone missing (removed by hand, say) or damaged in the middle of the log does
    /// not stop the replay: every whole record after it still comes back, and only the last
    /// segment is ever cut.
    #[test]
    fn records_after_a_gap_or_a_damaged_segment_still_come_back() {
        let dir = tempfile::tempdir().unwrap();
        let (_, mut wal) = replayed(dir.path(), 0);
        wal.segment_bytes = 50;
        let mut positions = Vec::new();
        for i in 0..6u8 {
            positions.push(wal.end());
            wal.append(&[i; 80]).unwrap();
        }
        wal.sync().unwrap();
        drop(wal);
        let starts = segments(dir.path()).unwrap();
        assert_eq!(starts, positions, "one record per segment here");
        // The second segment is gone; the fourth has a damaged record.
        std::fs::remove_file(dir.path().join(segment_name(starts[1]))).unwrap();
        let fourth = dir.path().join(segment_name(starts[3]));
        let mut bytes = std::fs::read(&fourth).unwrap();
        bytes[HEADER + 3] ^= 0xff;
        std::fs::write(&fourth, bytes).unwrap();
        let (seen, wal) = replayed(dir.path(), 0);
        let firsts: Vec<u8> = seen.iter().map(|(_, p)| p[0]).collect();
        assert_eq!(firsts, [0, 2, 4, 5]);
        assert_eq!(wal.end(), positions[5] + (HEADER + 80) as u64);
        assert_eq!(
            std::fs::metadata(&fourth).unwrap().len(),
            (HEADER + 80) as u64,
            "a segment that is not the last is left as it is"
        );
    }

    #[test]
    fn groups_read_back_as_they_were_written() {
        let event = |id, stream: &str, kind: Option<&str>, data: &str| {
            Event::new(
                EventId(id),
                StreamName::new(stream).unwrap(),
                kind.map(|k| EventType::new(k).unwrap()),
                data.to_owned(),
                1_700_000_000_123,
            )
        };
        let events = vec![
            event(7, "a", None, "one\nline two"),
            event(8, "b", Some("note"), ""),
            event(9, "a", None, "Zoë 🙂"),
        ];
        let shape = vec![(1, None), (2, Some(IdempotencyKey::new("k-1").unwrap()))];
        let bytes = Group::encode(1_700_000_000_123, &shape, &events);
        let group = Group::decode(&bytes).unwrap();
        assert_eq!(group.time, 1_700_000_000_123);
        assert_eq!(group.shape, shape);
        let seen = |es: &[Event]| {
            es.iter()
                .map(|e| {
                    (
                        e.id,
                        e.stream.clone(),
                        e.kind.clone(),
                        e.data.clone(),
                        e.time,
                    )
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(seen(&group.events), seen(&events));
        for cut in 0..bytes.len() {
            assert!(Group::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
    }

    /// Waits until the next segment, if one is being prepared, is ready.
    fn settle(wal: &Wal) {
        while wal.next.as_ref().is_some_and(|n| !n.thread.is_finished()) {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    #[test]
    fn segments_roll_over_and_old_ones_are_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let (_, mut wal) = replayed(dir.path(), 0);
        wal.segment_bytes = 1000;
        let big = vec![7u8; 600];
        let mut positions = Vec::new();
        for _ in 0..5 {
            positions.push(wal.end());
            wal.append(&big).unwrap();
            settle(&wal);
        }
        wal.sync().unwrap();
        // A record that does not fit in what is left of a prepared segment goes to the next.
        assert_eq!(segments(dir.path()).unwrap(), positions);
        forget_before(dir.path(), positions[4]).unwrap();
        assert_eq!(segments(dir.path()).unwrap(), [positions[4]]);
        drop(wal);
        let (seen, _) = replayed(dir.path(), positions[4]);
        assert_eq!(seen.len(), 1);
    }

    /// The first segment of a new log grows as it is written; once it holds enough the next is
    /// prepared (full length, zeros) and records are written over its zeros from then on,
    /// across a reopen too.
    #[test]
    fn prepared_segments_are_written_over_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let (_, mut wal) = replayed(dir.path(), 0);
        wal.segment_bytes = 4096;
        let record = (HEADER + 100) as u64;
        for i in 0..30u8 {
            wal.append(&[i; 100]).unwrap();
            settle(&wal);
        }
        wal.sync().unwrap();
        // 19 records fill half of the growing segment; the 20th starts the prepared one.
        assert_eq!(segments(dir.path()).unwrap(), [0, 19 * record]);
        let second = dir.path().join(segment_name(19 * record));
        assert_eq!(std::fs::metadata(&second).unwrap().len(), 4096);
        assert!(!dir.path().join(PREPARED).exists());
        let end = wal.end();
        drop(wal);
        let (seen, mut wal) = replayed(dir.path(), 0);
        assert_eq!(seen.len(), 30);
        assert!(seen
            .iter()
            .enumerate()
            .all(|(i, (at, p))| *at == i as u64 * record && p == &[i as u8; 100]));
        assert_eq!(wal.end(), end);
        wal.append(&[30; 100]).unwrap();
        wal.sync().unwrap();
        assert_eq!(
            std::fs::metadata(&second).unwrap().len(),
            4096,
            "written over zeros"
        );
        drop(wal);
        let (seen, _) = replayed(dir.path(), 0);
        assert_eq!(seen.len(), 31);
        assert_eq!(seen[30], (30 * record, vec![30; 100]));
    }

    /// When the next segment cannot be prepared (here its file cannot be made), the log goes
    /// on in segments that grow as they are written, and nothing is lost.
    #[test]
    fn a_segment_that_cannot_be_prepared_grows_instead() {
        let dir = tempfile::tempdir().unwrap();
        let (_, mut wal) = replayed(dir.path(), 0);
        wal.segment_bytes = 200;
        std::fs::create_dir(dir.path().join(PREPARED)).unwrap();
        for i in 1..=12u8 {
            wal.append(&[i; 60]).unwrap();
            settle(&wal);
        }
        wal.sync().unwrap();
        // Rolled over once full, three records each, with no zeros and no early roll.
        let record = HEADER as u64 + 60;
        let starts = segments(dir.path()).unwrap();
        assert_eq!(starts, [0, 3 * record, 6 * record, 9 * record]);
        for start in &starts {
            let len = std::fs::metadata(dir.path().join(segment_name(*start)))
                .unwrap()
                .len();
            assert_eq!(len, 3 * record);
        }
        drop(wal);
        std::fs::remove_dir(dir.path().join(PREPARED)).unwrap();
        let (seen, _) = replayed(dir.path(), 0);
        let firsts: Vec<u8> = seen.iter().map(|(_, p)| p[0]).collect();
        assert_eq!(firsts, (1..=12).collect::<Vec<u8>>());
    }

    /// What a crash leaves after the last whole record of a prepared segment (here half a
    /// record, and after it a whole one that was never acknowledged, as published data could
    /// make one look) is cut off, so none of it is read back, now or after the next append.
    #[test]
    fn a_torn_tail_in_a_prepared_segment_is_cut_off_whatever_follows() {
        let dir = tempfile::tempdir().unwrap();
        let (_, mut wal) = replayed(dir.path(), 0);
        wal.segment_bytes = 50;
        wal.append(&[1; 80]).unwrap();
        settle(&wal);
        wal.segment_bytes = 4096;
        wal.append(b"kept").unwrap();
        wal.sync().unwrap();
        let whole = wal.end();
        let segment = wal.segment;
        assert_eq!(wal.file_len, 50, "in the prepared segment");
        drop(wal);
        let forged = b"forged";
        let mut tail = vec![200, 0, 0, 0, 9, 9, 9, 9, 1, 2, 3];
        tail.extend_from_slice(&(forged.len() as u32).to_le_bytes());
        tail.extend_from_slice(&crc32fast::hash(forged).to_le_bytes());
        tail.extend_from_slice(forged);
        let path = dir.path().join(segment_name(segment));
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(&tail, whole - segment).unwrap();
        drop(file);
        let (seen, mut wal) = replayed(dir.path(), 0);
        assert_eq!(seen.last().unwrap().1, b"kept");
        assert_eq!(wal.end(), whole);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), whole - segment);
        wal.append(b"after").unwrap();
        wal.sync().unwrap();
        drop(wal);
        let (seen, _) = replayed(dir.path(), 0);
        let payloads: Vec<&[u8]> = seen.iter().map(|(_, p)| p.as_slice()).collect();
        assert_eq!(payloads, [&[1; 80][..], b"kept", b"after"]);
    }
}
