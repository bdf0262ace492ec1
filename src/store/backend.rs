//! Where the database file's bytes live: the seam between redb and the
//! disk, and the two layers webhookd puts on it.
//!
//! - [`StorageOpener`] opens the storage of `<data-dir>/webhookd.redb` as a
//!   redb [`StorageBackend`]. [`FileOpener`], the default, opens the file
//!   exactly as redb's own `Builder::create` and `Builder::open_read_only`
//!   do. Tests pass an opener whose backend fails writes or fsyncs on demand.
//! - [`SharedStorage`] and [`Lease`]: a [`Store`](super::Store) opens the
//!   storage once and lends it to every database handle it opens on it
//!   (the writable one, and after a storage error the read-only view and
//!   the attempts to reopen for writing). File locks taken through a lease
//!   are taken once on the storage and kept until the store is dropped, so
//!   this process's handles never exclude each other while every other
//!   process stays excluded, also between one handle and the next.
//! - [`Overlay`]: the read-only view. It reads the real file and keeps
//!   whatever redb writes while opening (the crash repair) in memory; once
//!   sealed it refuses every write and fsync. The file is never touched.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io;
use std::ops::Bound;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use redb::backends::FileBackend;
use redb::{BackendError, StorageBackend};

/// How a [`StorageOpener`] is asked to open the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Access {
    /// For reading only (the schema check before the first writable open):
    /// the file must exist and is never written.
    ReadOnly,
    /// For reading and writing; a missing file is created empty.
    ReadWrite,
}

/// Opens the storage behind the database file. [`Store::open_with`] calls
/// it once per [`Access`] when the store is opened; the storage is then
/// kept for the store's lifetime, across reopens after storage errors.
///
/// [`Store::open_with`]: super::Store::open_with
pub trait StorageOpener: Send + Sync {
    /// Opens the storage for `path` (`<data-dir>/webhookd.redb`).
    fn open(&self, path: &Path, access: Access) -> io::Result<Box<dyn StorageBackend>>;
}

/// The default [`StorageOpener`]: redb's [`FileBackend`] on the file,
/// opened with the options redb's `Builder::create` (read-write, created
/// if missing, never truncated) and `Builder::open_read_only` (read-only)
/// use, so locking and everything else behave as with those.
#[derive(Debug, Clone, Copy, Default)]
pub struct FileOpener;

impl StorageOpener for FileOpener {
    fn open(&self, path: &Path, access: Access) -> io::Result<Box<dyn StorageBackend>> {
        use std::os::unix::fs::OpenOptionsExt as _;
        let file = match access {
            Access::ReadOnly => OpenOptions::new().read(true).open(path)?,
            // Payment data: a new file is readable by its owner only,
            // whatever the umask.
            Access::ReadWrite => OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(path)?,
        };
        Ok(Box::new(FileBackend::new(file).map_err(io::Error::other)?))
    }
}

type Range = (Bound<u64>, Bound<u64>);

/// One storage shared by several database handles of this process, with
/// the file locks they took.
///
/// Invariant: a lock is taken on the inner storage the first time a handle
/// asks for it and released only when the storage is dropped (or when a
/// handle asks for an overlapping range that no handle holds any more).
/// Handles asking for a range another handle holds, in the same mode, get
/// it too: the [`Store`](super::Store) itself makes sure that only one of
/// them reads or writes at a time.
#[derive(Debug)]
pub(crate) struct SharedStorage {
    inner: Box<dyn StorageBackend>,
    locks: Mutex<Vec<HeldLock>>,
}

#[derive(Debug)]
struct HeldLock {
    range: Range,
    shared: bool,
    /// Handles holding it now; 0 means kept only for the next handle.
    users: usize,
}

impl SharedStorage {
    pub(crate) fn new(inner: Box<dyn StorageBackend>) -> Arc<SharedStorage> {
        Arc::new(SharedStorage {
            inner,
            locks: Mutex::new(Vec::new()),
        })
    }
}

impl Drop for SharedStorage {
    fn drop(&mut self) {
        // Releases every lock; nothing uses the storage any more.
        let _ = self.inner.close();
    }
}

/// One database handle's use of a [`SharedStorage`]: what redb is given.
#[derive(Debug)]
pub(crate) struct Lease {
    storage: Arc<SharedStorage>,
    /// Locks this handle took and has not released, with their mode.
    mine: Mutex<Vec<(Range, bool)>>,
}

impl Lease {
    pub(crate) fn new(storage: &Arc<SharedStorage>) -> Lease {
        Lease {
            storage: Arc::clone(storage),
            mine: Mutex::new(Vec::new()),
        }
    }

    fn acquire(&self, range: Range, shared: bool, wait: bool) -> Result<bool, BackendError> {
        let mut locks = lock(&self.storage.locks);
        if let Some(held) = locks
            .iter_mut()
            .find(|h| h.range == range && h.shared == shared)
        {
            held.users += 1;
            lock(&self.mine).push((range, shared));
            return Ok(true);
        }
        let mut i = 0;
        while i < locks.len() {
            if !overlaps(locks[i].range, range) {
                i += 1;
                continue;
            }
            if locks[i].users > 0 {
                // Held by another handle of this process in another shape.
                return if wait {
                    Err(BackendError::Io(io::Error::new(
                        io::ErrorKind::WouldBlock,
                        "the range is locked by another handle of this process",
                    )))
                } else {
                    Ok(false)
                };
            }
            let stale = locks.remove(i);
            self.storage
                .inner
                .unlock_range(stale.range.0, stale.range.1)?;
        }
        let inner = &self.storage.inner;
        let taken = match (shared, wait) {
            (false, false) => inner.try_lock_range(range.0, range.1)?,
            (true, false) => inner.try_lock_shared_range(range.0, range.1)?,
            (false, true) => inner.lock_range(range.0, range.1).map(|()| true)?,
            (true, true) => inner.lock_shared_range(range.0, range.1).map(|()| true)?,
        };
        if taken {
            locks.push(HeldLock {
                range,
                shared,
                users: 1,
            });
            lock(&self.mine).push((range, shared));
        }
        Ok(taken)
    }

    /// Gives up this handle's use of a lock; the storage keeps it.
    fn release(&self, range: Range, shared: bool) {
        let mut locks = lock(&self.storage.locks);
        if let Some(held) = locks
            .iter_mut()
            .find(|h| h.range == range && h.shared == shared)
        {
            held.users = held.users.saturating_sub(1);
        }
    }
}

impl StorageBackend for Lease {
    fn len(&self) -> Result<u64, io::Error> {
        self.storage.inner.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        self.storage.inner.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        self.storage.inner.set_len(len)
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        self.storage.inner.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        self.storage.inner.write(offset, data)
    }

    fn close(&self) -> Result<(), io::Error> {
        let mine = std::mem::take(&mut *lock(&self.mine));
        for (range, shared) in mine {
            self.release(range, shared);
        }
        Ok(())
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.acquire((start, end), false, false)
    }

    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.acquire((start, end), true, false)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.acquire((start, end), false, true).map(|_| ())
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.acquire((start, end), true, true).map(|_| ())
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        let mut mine = lock(&self.mine);
        if let Some(at) = mine.iter().position(|(r, _)| *r == (start, end)) {
            let (range, shared) = mine.remove(at);
            drop(mine);
            self.release(range, shared);
        }
        Ok(())
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        let range = (start, end);
        if lock(&self.storage.locks)
            .iter()
            .any(|h| h.users > 0 && overlaps(h.range, range))
        {
            return Ok(true);
        }
        self.storage.inner.query_lock_range(start, end)
    }
}

/// Whether two lock ranges share a byte.
fn overlaps(a: Range, b: Range) -> bool {
    match (inclusive(a), inclusive(b)) {
        (Some((a_low, a_high)), Some((b_low, b_high))) => a_low <= b_high && b_low <= a_high,
        _ => false,
    }
}

/// A range as `[low, high]`, or `None` if it is empty.
fn inclusive((start, end): Range) -> Option<(u64, u64)> {
    let low = match start {
        Bound::Unbounded => 0,
        Bound::Included(s) => s,
        Bound::Excluded(s) => s.checked_add(1)?,
    };
    let high = match end {
        Bound::Unbounded => u64::MAX,
        Bound::Included(e) => e,
        Bound::Excluded(e) => e.checked_sub(1)?,
    };
    (low <= high).then_some((low, high))
}

/// Granularity of the overlay: redb's page size.
const BLOCK: u64 = 4096;

/// Most bytes the overlay keeps in memory. Opening writes a few pages (the
/// header and what the repair commits); a view needing more is refused.
pub(crate) const OVERLAY_LIMIT_BYTES: usize = 64 * 1024 * 1024;

/// Copy-on-write view of a lease: reads see the real storage under what
/// was written to the overlay; writes, length changes and fsyncs never
/// reach the storage. Locks are the lease's, so the view keeps the file
/// locked against other processes.
///
/// A database opened on it sees exactly the storage's last durable state,
/// repaired in memory. [`Overlay::seal_handle`] lets the opener refuse
/// every write afterwards, so nothing can ever be acknowledged from it.
#[derive(Debug)]
pub(crate) struct Overlay {
    base: Lease,
    state: Mutex<OverlayState>,
    sealed: Arc<AtomicBool>,
}

#[derive(Debug)]
struct OverlayState {
    /// Length the database sees.
    len: u64,
    /// The base shows through below this offset where no block was
    /// written; lowered by a shrink, so cut-off bytes read back as zeros.
    base_visible: u64,
    /// Written blocks, by index; each exactly [`BLOCK`] bytes.
    blocks: HashMap<u64, Box<[u8]>>,
}

impl Overlay {
    pub(crate) fn new(base: Lease) -> io::Result<Overlay> {
        let len = base.len()?;
        Ok(Overlay {
            base,
            state: Mutex::new(OverlayState {
                len,
                base_visible: len,
                blocks: HashMap::new(),
            }),
            sealed: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Setting the returned flag makes every later write, length change
    /// and fsync fail.
    pub(crate) fn seal_handle(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.sealed)
    }

    fn check_unsealed(&self) -> io::Result<()> {
        if self.sealed.load(Ordering::Acquire) {
            return Err(io::Error::new(
                io::ErrorKind::ReadOnlyFilesystem,
                "read-only view of the database: writes are refused until it is reopened",
            ));
        }
        Ok(())
    }

    /// Fills `out` with the base's bytes at `offset`, zeros past `visible`.
    fn read_base(&self, visible: u64, offset: u64, out: &mut [u8]) -> io::Result<()> {
        let from_base = usize::try_from(visible.saturating_sub(offset))
            .unwrap_or(usize::MAX)
            .min(out.len());
        let (head, tail) = out.split_at_mut(from_base);
        if !head.is_empty() {
            self.base.read(offset, head)?;
        }
        tail.fill(0);
        Ok(())
    }
}

impl StorageBackend for Overlay {
    fn len(&self) -> Result<u64, io::Error> {
        Ok(lock(&self.state).len)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        let state = lock(&self.state);
        let end = offset.checked_add(out.len() as u64);
        if end.is_none_or(|end| end > state.len) {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read past the end of the storage",
            ));
        }
        self.read_base(state.base_visible, offset, out)?;
        if state.blocks.is_empty() {
            return Ok(());
        }
        let mut at = offset;
        while at < offset + out.len() as u64 {
            let index = at / BLOCK;
            let block_end = ((index + 1) * BLOCK).min(offset + out.len() as u64);
            if let Some(block) = state.blocks.get(&index) {
                let from = (at - index * BLOCK) as usize;
                let to = from + (block_end - at) as usize;
                let out_from = (at - offset) as usize;
                out[out_from..out_from + (to - from)].copy_from_slice(&block[from..to]);
            }
            at = block_end;
        }
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        self.check_unsealed()?;
        let mut state = lock(&self.state);
        if len < state.len {
            state.base_visible = state.base_visible.min(len);
            let first_gone = len.div_ceil(BLOCK);
            state.blocks.retain(|&index, _| index < first_gone);
            if let Some(block) = state.blocks.get_mut(&(len / BLOCK)) {
                block[(len % BLOCK) as usize..].fill(0);
            }
        }
        state.len = len;
        Ok(())
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        // Nothing here is durable, and nothing needs to be: the overlay
        // only ever holds the in-memory repair of a read-only view.
        self.check_unsealed()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        self.check_unsealed()?;
        let mut state = lock(&self.state);
        let end = offset
            .checked_add(data.len() as u64)
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        let mut at = offset;
        while at < end {
            let index = at / BLOCK;
            let block_end = ((index + 1) * BLOCK).min(end);
            if !state.blocks.contains_key(&index) {
                if (state.blocks.len() + 1) * BLOCK as usize > OVERLAY_LIMIT_BYTES {
                    return Err(io::Error::new(
                        io::ErrorKind::StorageFull,
                        "the read-only view's in-memory overlay is full",
                    ));
                }
                let mut block = vec![0; BLOCK as usize].into_boxed_slice();
                self.read_base(state.base_visible, index * BLOCK, &mut block)?;
                state.blocks.insert(index, block);
            }
            let from = (at - index * BLOCK) as usize;
            let to = from + (block_end - at) as usize;
            let data_from = (at - offset) as usize;
            if let Some(block) = state.blocks.get_mut(&index) {
                block[from..to].copy_from_slice(&data[data_from..data_from + (to - from)]);
            }
            at = block_end;
        }
        state.len = state.len.max(end);
        Ok(())
    }

    fn close(&self) -> Result<(), io::Error> {
        self.base.close()
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.base.try_lock_range(start, end)
    }

    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.base.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.base.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.base.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.base.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.base.query_lock_range(start, end)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every guarded value is updated in single assignments or pushes; a
    // panic elsewhere cannot leave one half-written.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use redb::backends::InMemoryBackend;
    use redb::{Database, ReadableDatabase, TableDefinition};

    use super::*;

    const TABLE: TableDefinition<u64, u64> = TableDefinition::new("t");

    /// redb's file backend whose writes fail while `failing` is set.
    #[derive(Debug)]
    struct Switch {
        inner: Box<dyn StorageBackend>,
        failing: Arc<AtomicBool>,
    }

    impl StorageBackend for Switch {
        fn len(&self) -> Result<u64, io::Error> {
            self.inner.len()
        }
        fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
            self.inner.read(offset, out)
        }
        fn set_len(&self, len: u64) -> Result<(), io::Error> {
            self.inner.set_len(len)
        }
        fn sync_data(&self) -> Result<(), io::Error> {
            self.inner.sync_data()
        }
        fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
            if self.failing.load(Ordering::SeqCst) {
                return Err(io::Error::from_raw_os_error(5));
            }
            self.inner.write(offset, data)
        }
        fn close(&self) -> Result<(), io::Error> {
            self.inner.close()
        }
        fn try_lock_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<bool, BackendError> {
            self.inner.try_lock_range(s, e)
        }
        fn try_lock_shared_range(
            &self,
            s: Bound<u64>,
            e: Bound<u64>,
        ) -> Result<bool, BackendError> {
            self.inner.try_lock_shared_range(s, e)
        }
        fn unlock_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<(), BackendError> {
            self.inner.unlock_range(s, e)
        }
        fn query_lock_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<bool, BackendError> {
            self.inner.query_lock_range(s, e)
        }
    }

    fn value(db: &Database, key: u64) -> Option<u64> {
        let txn = db.begin_read().unwrap();
        let table = txn.open_table(TABLE).unwrap();
        table.get(key).unwrap().map(|v| v.value())
    }

    fn insert(db: &Database, key: u64) -> Result<(), redb::Error> {
        let txn = db.begin_write()?;
        txn.open_table(TABLE)?.insert(key, key)?;
        txn.commit()?;
        Ok(())
    }

    fn open_view(storage: &Arc<SharedStorage>) -> Result<Database, redb::Error> {
        let overlay = Overlay::new(Lease::new(storage))?;
        let seal = overlay.seal_handle();
        let db = Database::builder().create_with_backend(overlay)?;
        seal.store(true, Ordering::SeqCst);
        Ok(db)
    }

    #[test]
    fn a_view_serves_the_last_durable_commit_keeps_the_lock_and_never_writes_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.redb");
        let failing = Arc::new(AtomicBool::new(false));
        let storage = SharedStorage::new(Box::new(Switch {
            inner: FileOpener.open(&path, Access::ReadWrite).unwrap(),
            failing: Arc::clone(&failing),
        }));
        let db = Database::builder()
            .create_with_backend(Lease::new(&storage))
            .unwrap();
        insert(&db, 1).unwrap();
        failing.store(true, Ordering::SeqCst);
        assert!(insert(&db, 2).is_err());
        // Latched now: redb answers reads from its cache at best, and every
        // access of the file fails until the handle is closed.
        assert!(insert(&db, 3).is_err());
        drop(db);

        let before = std::fs::read(&path).unwrap();
        // Opening for writing repairs the file, which fails while writes do.
        assert!(
            Database::builder()
                .create_with_backend(Lease::new(&storage))
                .is_err()
        );
        let view = open_view(&storage).unwrap();
        assert_eq!(value(&view, 1), Some(1));
        assert_eq!(value(&view, 2), None);
        // Nothing can be committed through it, even once writes work.
        failing.store(false, Ordering::SeqCst);
        assert!(insert(&view, 3).is_err());
        failing.store(true, Ordering::SeqCst);
        // Another opener (as another process would) is refused meanwhile.
        assert!(matches!(
            Database::create(&path),
            Err(redb::DatabaseError::DatabaseAlreadyOpen)
        ));
        // While the view stays open, an attempt to reopen for writing may
        // run (and fail) beside it, then the view goes on reading.
        assert!(
            Database::builder()
                .create_with_backend(Lease::new(&storage))
                .is_err()
        );
        assert_eq!(value(&view, 1), Some(1));
        drop(view);
        assert_eq!(
            std::fs::read(&path).unwrap(),
            before,
            "the view wrote the file"
        );

        failing.store(false, Ordering::SeqCst);
        let db = Database::builder()
            .create_with_backend(Lease::new(&storage))
            .unwrap();
        assert_eq!(value(&db, 1), Some(1));
        assert_eq!(value(&db, 2), None);
        insert(&db, 4).unwrap();
        drop(db);
        assert!(matches!(
            Database::create(&path),
            Err(redb::DatabaseError::DatabaseAlreadyOpen)
        ));
        // The store's storage gone, the file is free again.
        drop(storage);
        let db = Database::create(&path).unwrap();
        assert_eq!(value(&db, 4), Some(4));
    }

    #[test]
    fn the_overlay_shows_its_writes_over_the_base_and_never_changes_it() {
        let base = InMemoryBackend::new();
        base.set_len(3 * BLOCK).unwrap();
        base.write(0, &vec![7; 3 * BLOCK as usize]).unwrap();
        let storage = SharedStorage::new(Box::new(base));
        let overlay = Overlay::new(Lease::new(&storage)).unwrap();

        // A write across a block boundary, then reads around it.
        overlay.write(BLOCK - 2, &[1, 2, 3, 4]).unwrap();
        let mut out = vec![0; 8];
        overlay.read(BLOCK - 4, &mut out).unwrap();
        assert_eq!(out, [7, 7, 1, 2, 3, 4, 7, 7]);
        let mut base_bytes = vec![0; 3 * BLOCK as usize];
        storage.inner.read(0, &mut base_bytes).unwrap();
        assert!(base_bytes.iter().all(|&b| b == 7), "the base was written");

        // Shrink then grow: the cut-off part reads back as zeros.
        overlay.set_len(BLOCK + 1).unwrap();
        overlay.set_len(4 * BLOCK).unwrap();
        let mut out = vec![9; 4];
        overlay.read(BLOCK - 2, &mut out).unwrap();
        assert_eq!(out, [1, 2, 3, 0]);
        let mut out = vec![9; 2];
        overlay.read(2 * BLOCK, &mut out).unwrap();
        assert_eq!(out, [0, 0]);
        overlay.write(4 * BLOCK - 1, &[5, 6]).unwrap();
        assert_eq!(overlay.len().unwrap(), 4 * BLOCK + 1);
        assert!(
            overlay.read(4 * BLOCK, &mut [0; 2]).is_err(),
            "read past the end"
        );

        overlay.seal_handle().store(true, Ordering::SeqCst);
        assert!(overlay.write(0, &[1]).is_err());
        assert!(overlay.set_len(0).is_err());
        assert!(overlay.sync_data().is_err());
        let mut out = vec![0; 1];
        overlay.read(BLOCK, &mut out).unwrap();
        assert_eq!(out, [3]);
    }

    #[test]
    fn lock_ranges_overlap_only_when_they_share_a_byte() {
        let r = |a: Bound<u64>, b: Bound<u64>| (a, b);
        assert!(overlaps(
            r(Bound::Unbounded, Bound::Unbounded),
            r(Bound::Included(5), Bound::Included(5))
        ));
        assert!(!overlaps(
            r(Bound::Unbounded, Bound::Excluded(5)),
            r(Bound::Included(5), Bound::Unbounded)
        ));
        assert!(overlaps(
            r(Bound::Unbounded, Bound::Included(5)),
            r(Bound::Excluded(4), Bound::Unbounded)
        ));
        assert!(!overlaps(
            r(Bound::Excluded(4), Bound::Excluded(5)),
            r(Bound::Unbounded, Bound::Unbounded)
        ));
    }
}
