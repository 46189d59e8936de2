//! What makes a sled flush durable. sled 0.34's `flush` writes its buffer and calls
//! `sync_file_range` on Linux — the data reaches the disk, but not the file's size or block
//! allocation, nor past the disk's write cache, so it survives `kill -9` and not a power cut. So
//! every flush here is followed by an `fdatasync` of sled's log file, through a handle of our
//! own (`fdatasync` applies to the file, whichever descriptor wrote it). sled also writes each
//! node over a quarter of a segment to a file of its own, which it never syncs; so a flush here
//! syncs those too, before the log.

use std::collections::HashMap;
use std::fs::File;
use std::sync::Mutex;

use sled::Db;

use crate::broker::engine::local::store::StoreError;

/// The file sled 0.34 keeps its log in, inside the database directory (its `Config::db_path`,
/// which is private); the fsync test (`tests/fsync.rs`) sees the path in every `fdatasync`.
pub(super) const SLED_LOG_FILE: &str = "db";
/// sled's settings file beside it.
pub(super) const SLED_CONF_FILE: &str = "conf";

/// The directory, beside the log, where sled writes each tree node too large for its log (over a
/// quarter of a segment: runs of events of about 8 KiB or more) as a file of its own, named by the
/// node's log position, with `write_all` and no sync.
pub(super) const SLED_BLOB_DIR: &str = "blobs";

/// Syncs what sled's flush leaves unsynced.
pub(super) struct Syncer {
    /// sled's log file.
    pub(super) log: File,
    pub(super) blob_dir: std::path::PathBuf,
    /// Blob files synced so far, with their length then. A blob is written while the node's log
    /// record is reserved, so a flush returns only once the blobs its records point to are
    /// whole; one still growing belongs to a later flush, and is synced again once it is.
    pub(super) synced_blobs: Mutex<HashMap<std::ffi::OsString, u64>>,
}

impl Syncer {
    /// Makes everything written to `db` so far durable: sled's flush, then the blob files it
    /// wrote (and their directory's entries), then an `fdatasync` of its log, so no synced
    /// record points to a blob that is not.
    pub(super) fn flush(&self, db: &Db) -> Result<(), StoreError> {
        db.flush()?;
        self.sync_blobs().map_err(|source| StoreError::Io {
            what: "syncing sled's blob files failed".into(),
            source,
        })?;
        self.log.sync_data().map_err(|source| StoreError::Io {
            what: "fdatasync of the log failed".into(),
            source,
        })
    }

    fn sync_blobs(&self) -> std::io::Result<()> {
        // sled removes blobs it no longer needs, at any moment: a vanished one is fine.
        let gone = |e: &std::io::Error| e.kind() == std::io::ErrorKind::NotFound;
        let entries = match std::fs::read_dir(&self.blob_dir) {
            Ok(entries) => entries,
            Err(e) if gone(&e) => return Ok(()),
            Err(e) => return Err(e),
        };
        let mut synced = self.synced_blobs.lock().unwrap_or_else(|e| e.into_inner());
        let mut now = HashMap::with_capacity(synced.len());
        let mut new_names = false;
        for entry in entries {
            let entry = entry?;
            let len = match entry.metadata() {
                Ok(meta) => meta.len(),
                Err(e) if gone(&e) => continue,
                Err(e) => return Err(e),
            };
            let name = entry.file_name();
            if synced.get(&name) != Some(&len) {
                match File::open(entry.path()).and_then(|f| f.sync_data()) {
                    Ok(()) => {}
                    Err(e) if gone(&e) => continue,
                    Err(e) => return Err(e),
                }
                new_names |= !synced.contains_key(&name);
            }
            now.insert(name, len);
        }
        if new_names {
            File::open(&self.blob_dir)?.sync_all()?;
        }
        *synced = now;
        Ok(())
    }
}
