//! The read-only view: a copy-on-write layer over the database file's
//! storage that keeps in memory whatever redb writes while opening (its
//! crash repair) and, once sealed, refuses every write and fsync. A
//! database opened on it sees the file's last durable commit; the file is
//! never touched, and stays locked against other processes through the
//! lease underneath ([`super::reopen`] uses it while writes fail).

use std::collections::HashMap;
use std::io;
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use redb::{BackendError, StorageBackend};

use super::backend::Lease;

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
    use crate::store::backend::{Access, FileOpener, SharedStorage, StorageOpener};
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
        Lease::new(&storage).read(0, &mut base_bytes).unwrap();
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
}
