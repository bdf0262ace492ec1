//! The recording disk: a redb `StorageBackend` in memory that keeps every
//! call that changed the file, in order, so that the file a power cut
//! leaves can be built afterwards for any moment of the run ([`super::cut`]).
//!
//! What redb reads is the page cache: every write so far. What a power cut
//! may keep is decided later from the history: everything up to the last
//! `sync_data` that returned, plus some of what came after.
//!
//! [`Disk::cut`] is the power cut itself: from then on every call fails
//! with EIO, as a dead disk's would, and nothing more is recorded.

use std::io;
use std::ops::Bound;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use redb::{BackendError, StorageBackend};
use webhookd::store::{Access, StorageOpener};

use crate::common::now_millis;

const EIO: i32 = 5;

/// One call that changed the file.
#[derive(Debug, Clone)]
pub enum Op {
    /// `write(offset, data)` returned.
    Write { offset: u64, data: Arc<[u8]> },
    /// `set_len(len)` returned.
    SetLen(u64),
    /// `sync_data()` returned: everything before it is durable.
    Sync,
}

/// An [`Op`] and the wall time (ms) at which it returned.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub op: Op,
    pub at_ms: u64,
}

/// The disk shared by every handle opened on it.
#[derive(Debug, Default)]
pub struct Disk {
    state: Mutex<State>,
    /// `state.history.len()`, readable without the lock.
    ops: AtomicUsize,
    dead: AtomicBool,
    /// Whether ops are kept (the recorded run) or only applied (a cut
    /// image being checked).
    recording: bool,
}

#[derive(Debug, Default)]
struct State {
    /// The file as reads see it: every write so far.
    file: Vec<u8>,
    history: Vec<Recorded>,
}

impl Disk {
    /// An empty disk that records every op.
    pub fn recording() -> Arc<Disk> {
        Arc::new(Disk {
            recording: true,
            ..Disk::default()
        })
    }

    /// A disk holding `file` (a cut image), recording nothing.
    pub fn holding(file: Vec<u8>) -> Arc<Disk> {
        Arc::new(Disk {
            state: Mutex::new(State {
                file,
                history: Vec::new(),
            }),
            ..Disk::default()
        })
    }

    /// A handle on the disk, as the opener gives redb.
    pub fn backend(self: &Arc<Disk>, access: Access) -> DiskBackend {
        DiskBackend {
            disk: Arc::clone(self),
            access,
        }
    }

    /// The file as it is now.
    pub fn file(&self) -> Vec<u8> {
        lock(&self.state).file.clone()
    }

    /// How many calls have changed the file so far: a moment of the run.
    /// A cut at `n` keeps (some of) the first `n` ops and none after.
    pub fn ops(&self) -> usize {
        self.ops.load(Ordering::SeqCst)
    }

    /// The power cut: every later call fails. Returns the moment it
    /// happened (ops recorded before it).
    pub fn cut(&self) -> usize {
        let state = lock(&self.state);
        self.dead.store(true, Ordering::SeqCst);
        state.history.len()
    }

    /// Bytes the last commit wrote: between the last two syncs.
    pub fn bytes_in_last_commit(&self) -> usize {
        let state = lock(&self.state);
        let mut ops = state.history.iter().rev();
        if !matches!(ops.next(), Some(Recorded { op: Op::Sync, .. })) {
            return 0;
        }
        ops.take_while(|r| !matches!(r.op, Op::Sync))
            .map(|r| match &r.op {
                Op::Write { data, .. } => data.len(),
                _ => 0,
            })
            .sum()
    }

    /// Every op recorded, in order.
    pub fn history(&self) -> Vec<Recorded> {
        lock(&self.state).history.clone()
    }

    fn alive(&self) -> io::Result<()> {
        if self.dead.load(Ordering::SeqCst) {
            Err(io::Error::from_raw_os_error(EIO))
        } else {
            Ok(())
        }
    }

    fn record(&self, state: &mut State, op: Op) {
        if !self.recording {
            return;
        }
        state.history.push(Recorded {
            op,
            at_ms: now_millis(),
        });
        self.ops.store(state.history.len(), Ordering::SeqCst);
    }
}

/// A handle on a [`Disk`]: what redb is given.
#[derive(Debug)]
pub struct DiskBackend {
    disk: Arc<Disk>,
    access: Access,
}

impl StorageBackend for DiskBackend {
    fn len(&self) -> Result<u64, io::Error> {
        self.disk.alive()?;
        Ok(lock(&self.disk.state).file.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        self.disk.alive()?;
        let state = lock(&self.disk.state);
        let start = usize::try_from(offset).map_err(io::Error::other)?;
        let end = start + out.len();
        if end > state.file.len() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read past the end of the file",
            ));
        }
        out.copy_from_slice(&state.file[start..end]);
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        self.writable()?;
        let mut state = lock(&self.disk.state);
        self.disk.alive()?;
        state
            .file
            .resize(usize::try_from(len).map_err(io::Error::other)?, 0);
        self.disk.record(&mut state, Op::SetLen(len));
        Ok(())
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        self.writable()?;
        let mut state = lock(&self.disk.state);
        self.disk.alive()?;
        self.disk.record(&mut state, Op::Sync);
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        self.writable()?;
        let mut state = lock(&self.disk.state);
        self.disk.alive()?;
        let start = usize::try_from(offset).map_err(io::Error::other)?;
        let end = start + data.len();
        if end > state.file.len() {
            state.file.resize(end, 0);
        }
        state.file[start..end].copy_from_slice(data);
        self.disk.record(
            &mut state,
            Op::Write {
                offset,
                data: data.into(),
            },
        );
        Ok(())
    }

    fn close(&self) -> Result<(), io::Error> {
        Ok(())
    }

    // One process, and the store's own lease layer shares one storage
    // between its handles: every lock is granted.
    fn try_lock_range(&self, _: Bound<u64>, _: Bound<u64>) -> Result<bool, BackendError> {
        Ok(true)
    }

    fn try_lock_shared_range(&self, _: Bound<u64>, _: Bound<u64>) -> Result<bool, BackendError> {
        Ok(true)
    }

    fn lock_range(&self, _: Bound<u64>, _: Bound<u64>) -> Result<(), BackendError> {
        Ok(())
    }

    fn lock_shared_range(&self, _: Bound<u64>, _: Bound<u64>) -> Result<(), BackendError> {
        Ok(())
    }

    fn unlock_range(&self, _: Bound<u64>, _: Bound<u64>) -> Result<(), BackendError> {
        Ok(())
    }

    fn query_lock_range(&self, _: Bound<u64>, _: Bound<u64>) -> Result<bool, BackendError> {
        Ok(false)
    }
}

impl DiskBackend {
    fn writable(&self) -> io::Result<()> {
        match self.access {
            Access::ReadOnly => Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "opened read-only",
            )),
            _ => Ok(()),
        }
    }
}

/// Opens the data dir's database file on a [`Disk`]. The store decides
/// whether a database exists from the real file's length, so the opener
/// keeps a sparse stand-in of the disk's length there.
#[derive(Debug, Clone)]
pub struct DiskOpener(pub Arc<Disk>);

impl DiskOpener {
    /// Makes `<data_dir>/webhookd.redb` as long as the disk's file, so the
    /// store takes the path it takes for that file on a real disk.
    pub fn stand_in(&self, data_dir: &Path) {
        let len = lock(&self.0.state).file.len() as u64;
        std::fs::create_dir_all(data_dir).expect("data dir");
        let file = std::fs::File::create(data_dir.join(webhookd::store::DB_FILE_NAME))
            .expect("stand-in file");
        file.set_len(len).expect("stand-in length");
    }
}

impl StorageOpener for DiskOpener {
    fn open(&self, _path: &Path, access: Access) -> io::Result<Box<dyn StorageBackend>> {
        self.0.alive()?;
        Ok(Box::new(self.0.backend(access)))
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
