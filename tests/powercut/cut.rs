//! What a power cut can leave: the file built from a recorded history for
//! one moment of the run and one seeded choice of what reached the disk.
//!
//! The model, and why a real disk can produce every file it builds (and
//! no other):
//!
//! - Everything up to the last `sync_data` that returned before the cut is
//!   on the disk: that is what fdatasync promises, file size included.
//! - Of what came after, the disk holds any subset, in any order, at the
//!   granularity of a 4 KiB block (a page of the page cache, and redb's
//!   page size): a write spanning several blocks can be torn at every
//!   block boundary. Writeback writes a page's content as it is at that
//!   moment, and a page is not written again while its write is in flight,
//!   so what a block holds after the cut is its content at some moment
//!   since the sync: the durable content, or the content after one of the
//!   writes that touched it. Each block's moment is chosen on its own.
//!   (An older write landing over a newer one cannot happen: the page cache
//!   holds only the newest content.)
//! - The file's size is its size at some moment since the sync: each
//!   unsynced `set_len`, and each write that extended the file, is kept or
//!   lost with everything before it in the size's history. Blocks past the
//!   chosen size are gone; a block a shrink zeroed keeps its zeros only if
//!   that shrink is part of the chosen size's history.
//! - A block the sync left without data (a hole, or past the durable
//!   size) whose write did not land reads as zeros, or, on a file system
//!   that commits block allocations before their data (ext4
//!   `data=writeback`), as stale bytes from elsewhere: both are chosen.

use std::collections::BTreeMap;

use rand::{RngExt, SeedableRng};
use rand_xorshift::XorShiftRng;

use crate::disk::{Op, Recorded};

/// The granularity of tearing: a page of the page cache, redb's page size.
pub const BLOCK: usize = 4096;

/// How the unsynced writes of one cut are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// None of them reached the disk.
    NoneLanded,
    /// All of them did, as after a crash of the process alone.
    AllLanded,
    /// Each block at a moment of its own, the size at one of its own.
    Torn,
}

/// What one cut kept of its unsynced writes.
#[derive(Debug, Clone, Copy, Default)]
pub struct CutStats {
    /// Blocks those ops touched.
    pub blocks: usize,
    /// Of which, kept at their newest content.
    pub newest: usize,
    /// Of which, kept at their durable content.
    pub durable: usize,
    /// Whether block 0 (redb's header, with its commit slots) changed
    /// while some other block was left behind its newest content: a commit
    /// whose header landed without all of its pages.
    pub header_without_pages: bool,
    /// Whether the size differs from the size before the cut.
    pub size_rolled_back: bool,
    /// Whether blocks without data read as stale bytes instead of zeros.
    pub stale_bytes: bool,
}

/// Builds the files cuts leave, for moments in increasing order: the
/// durable file is carried forward from one moment to the next.
pub struct Sweep<'h> {
    history: &'h [Recorded],
    /// The file as of `applied` ops, all of them synced.
    durable: Vec<u8>,
    applied: usize,
    /// Index of the last sync seen while scanning, and up to where.
    last_sync: Option<usize>,
    scanned: usize,
}

impl<'h> Sweep<'h> {
    pub fn new(history: &'h [Recorded]) -> Sweep<'h> {
        Sweep {
            history,
            durable: Vec::new(),
            applied: 0,
            last_sync: None,
            scanned: 0,
        }
    }

    /// The file a power cut leaves when the first `moment` ops have
    /// returned and none after, with the unsynced ones chosen by `seed`.
    /// Moments must not decrease from one call to the next.
    pub fn image(&mut self, moment: usize, seed: u64) -> (Vec<u8>, CutStats) {
        assert!(moment <= self.history.len(), "moment past the history");
        assert!(moment >= self.scanned, "moments must not decrease");
        for i in self.scanned..moment {
            if matches!(self.history[i].op, Op::Sync) {
                self.last_sync = Some(i);
            }
        }
        self.scanned = moment;
        let durable_upto = self.last_sync.map_or(0, |s| s + 1);
        for recorded in &self.history[self.applied..durable_upto] {
            apply(&mut self.durable, &recorded.op);
        }
        self.applied = durable_upto;
        let window = &self.history[durable_upto..moment];
        let mut rng = XorShiftRng::seed_from_u64(seed);
        let fate = match rng.random_range(0..6) {
            0 => Fate::NoneLanded,
            1 => Fate::AllLanded,
            _ => Fate::Torn,
        };
        land(&self.durable, window, fate, &mut rng)
    }
}

/// Applies an op to a file as the page cache would.
pub fn apply(file: &mut Vec<u8>, op: &Op) {
    match op {
        Op::Write { offset, data } => {
            let start = *offset as usize;
            let end = start + data.len();
            if end > file.len() {
                file.resize(end, 0);
            }
            file[start..end].copy_from_slice(data);
        }
        Op::SetLen(len) => file.resize(*len as usize, 0),
        Op::Sync => {}
    }
}

/// One content a block had since the sync.
struct Version {
    content: Box<[u8]>,
    /// Index in the window of the op that gave it.
    op: usize,
    /// Given by a shrink (zeros past the new size), not by a write.
    shrink: bool,
}

/// A block since the sync: its durable content and each later one.
struct Block {
    durable: Box<[u8]>,
    /// Whether the sync left it without data (all zeros).
    was_hole: bool,
    versions: Vec<Version>,
}

/// What happened since the sync: each block's contents, the file's sizes.
struct Unsynced {
    blocks: BTreeMap<usize, Block>,
    /// Each size the file had, with the index in the window of the op that
    /// set it (`None`: the durable size).
    sizes: Vec<(Option<usize>, usize)>,
}

impl Unsynced {
    /// Replays the window over the durable file, as the page cache saw it.
    fn replay(durable: &[u8], window: &[Recorded]) -> Unsynced {
        let mut blocks: BTreeMap<usize, Block> = BTreeMap::new();
        let mut sizes = vec![(None, durable.len())];
        let mut size = durable.len();
        for (i, recorded) in window.iter().enumerate() {
            match &recorded.op {
                Op::Write { offset, data } => {
                    let start = *offset as usize;
                    let end = start + data.len();
                    let mut at = start;
                    while at < end {
                        let b = at / BLOCK;
                        let block_end = ((b + 1) * BLOCK).min(end);
                        let block = entry(&mut blocks, durable, b);
                        let mut content = newest(block).to_vec().into_boxed_slice();
                        content[at - b * BLOCK..block_end - b * BLOCK]
                            .copy_from_slice(&data[at - start..block_end - start]);
                        block.versions.push(Version {
                            content,
                            op: i,
                            shrink: false,
                        });
                        at = block_end;
                    }
                    if end > size {
                        size = end;
                        sizes.push((Some(i), size));
                    }
                }
                Op::SetLen(len) => {
                    let len = *len as usize;
                    let shrunk = if len < size {
                        len / BLOCK..size.div_ceil(BLOCK)
                    } else {
                        0..0
                    };
                    for b in shrunk {
                        let block = entry(&mut blocks, durable, b);
                        let mut content = newest(block).to_vec().into_boxed_slice();
                        let from = len.saturating_sub(b * BLOCK);
                        if content[from..].iter().any(|&x| x != 0) {
                            content[from..].fill(0);
                            block.versions.push(Version {
                                content,
                                op: i,
                                shrink: true,
                            });
                        }
                    }
                    size = len;
                    sizes.push((Some(i), size));
                }
                Op::Sync => unreachable!("a window holds no sync"),
            }
        }
        Unsynced { blocks, sizes }
    }
}

/// Builds the file a cut leaves from the durable file and the unsynced ops.
pub fn land(
    durable: &[u8],
    window: &[Recorded],
    fate: Fate,
    rng: &mut XorShiftRng,
) -> (Vec<u8>, CutStats) {
    let Unsynced { blocks, sizes } = Unsynced::replay(durable, window);
    let newest_size = sizes.last().expect("the durable size").1;
    let (size_at, size) = match fate {
        Fate::NoneLanded => sizes[0],
        Fate::AllLanded => *sizes.last().expect("the durable size"),
        Fate::Torn => sizes[rng.random_range(0..sizes.len())],
    };
    let mut stats = CutStats {
        blocks: blocks.len(),
        size_rolled_back: size != newest_size,
        stale_bytes: fate == Fate::Torn && rng.random_bool(0.5),
        ..CutStats::default()
    };
    let mut file = durable.to_vec();
    file.resize(size, 0);
    let mut header_changed = false;
    let mut some_behind = false;
    for (&b, block) in &blocks {
        let start = b * BLOCK;
        if start >= size {
            continue;
        }
        let mut chosen = match fate {
            Fate::NoneLanded => 0,
            Fate::AllLanded => block.versions.len(),
            Fate::Torn => rng.random_range(0..=block.versions.len()),
        };
        // A shrink's zeros stay only if the chosen size includes that shrink.
        while chosen > 0 && {
            let v = &block.versions[chosen - 1];
            v.shrink && size_at.is_none_or(|at| v.op > at)
        } {
            chosen -= 1;
        }
        let end = (start + BLOCK).min(size);
        let content: &[u8] = if chosen == 0 {
            &block.durable
        } else {
            &block.versions[chosen - 1].content
        };
        file[start..end].copy_from_slice(&content[..end - start]);
        if chosen == 0 && block.was_hole && !block.versions.is_empty() && stats.stale_bytes {
            rng.fill(&mut file[start..end]);
        }
        some_behind |= chosen < block.versions.len();
        header_changed |= b == 0 && chosen > 0;
        stats.newest += usize::from(chosen == block.versions.len());
        stats.durable += usize::from(chosen == 0);
    }
    stats.header_without_pages = header_changed && some_behind;
    (file, stats)
}

fn entry<'b>(blocks: &'b mut BTreeMap<usize, Block>, durable: &[u8], b: usize) -> &'b mut Block {
    blocks.entry(b).or_insert_with(|| {
        let mut content = vec![0; BLOCK].into_boxed_slice();
        let start = b * BLOCK;
        if start < durable.len() {
            let end = (start + BLOCK).min(durable.len());
            content[..end - start].copy_from_slice(&durable[start..end]);
        }
        Block {
            was_hole: content.iter().all(|&x| x == 0),
            durable: content,
            versions: Vec::new(),
        }
    })
}

fn newest(block: &Block) -> &[u8] {
    block.versions.last().map_or(&block.durable, |v| &v.content)
}
