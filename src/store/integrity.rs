//! Every page's checksum, verified: what `webhookd check` does before it
//! reads anything else.
//!
//! redb checksums the pages of its B-trees, but verifies them only when it
//! repairs a file a crash left, never on reads: a bit flipped in a stored
//! record of a file closed cleanly would be read and served as it is. This
//! opens the file on a copy-on-write view ([`super::overlay`]) and runs
//! redb's integrity check there, so whatever that check repairs stays in
//! memory and the file is never changed.

use std::path::Path;
use std::sync::Arc;

use redb::{Database, DatabaseError, StorageError};

use super::backend::{Access, Lease, SharedStorage, StorageOpener};
use super::overlay::Overlay;
use super::{CACHE_BYTES, DB_FILE_NAME, FileOpener, OpenError};

/// What verifying the pages found.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Pages {
    /// Every page of the last commit passes its checksum (or there is no
    /// database yet).
    Intact,
    /// Some do not; the message says what redb found.
    Damaged(String),
}

/// Verifies the checksum of every page the database in `data_dir` uses,
/// without changing the file. A file a crash left is first repaired in
/// memory, as opening it would. Refuses a file in use by another process.
pub fn verify_pages(data_dir: &Path) -> Result<Pages, OpenError> {
    verify_pages_with(data_dir, &FileOpener)
}

/// [`verify_pages`] on storage that `opener` opens.
pub fn verify_pages_with(data_dir: &Path, opener: &dyn StorageOpener) -> Result<Pages, OpenError> {
    let path = data_dir.join(DB_FILE_NAME);
    if std::fs::metadata(&path).is_ok_and(|m| m.len() == 0) || !path.exists() {
        return Ok(Pages::Intact);
    }
    let database_error = |source: redb::Error| OpenError::database(data_dir, source);
    // Opened for writing, as redb's writable open locks it (the view never
    // writes through: it keeps every write in memory).
    let storage = opener
        .open(&path, Access::ReadWrite)
        .map_err(|e| database_error(e.into()))?;
    let storage: Arc<SharedStorage> = SharedStorage::new(storage);
    let view = Overlay::new(Lease::new(&storage)).map_err(|e| database_error(e.into()))?;
    let open = Database::builder()
        .set_cache_size(CACHE_BYTES)
        .create_with_backend(view);
    let mut db = match open {
        Ok(db) => db,
        Err(DatabaseError::Storage(StorageError::Corrupted(found))) => {
            return Ok(Pages::Damaged(found));
        }
        Err(e) => return Err(database_error(e.into())),
    };
    match db.check_integrity() {
        Ok(true) => Ok(Pages::Intact),
        Ok(false) => Ok(Pages::Damaged(
            "pages of the last commit fail their checksums (redb could only fall back to the commit before it)"
                .to_owned(),
        )),
        Err(DatabaseError::Storage(StorageError::Corrupted(found))) => Ok(Pages::Damaged(found)),
        Err(e) => Err(database_error(e.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    #[test]
    fn a_flipped_bit_in_a_stored_page_is_found_and_the_file_left_as_it_is() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            verify_pages(dir.path()).unwrap(),
            Pages::Intact,
            "no file yet"
        );
        let store = Store::open(dir.path()).unwrap();
        drop(store);
        let file = dir.path().join(DB_FILE_NAME);
        assert_eq!(verify_pages(dir.path()).unwrap(), Pages::Intact);

        // The id hash key sits in a leaf of `meta`; flip a bit of its name.
        let mut bytes = std::fs::read(&file).unwrap();
        let at = bytes
            .windows(13)
            .position(|w| w == b"id_hash_key_0")
            .expect("the key's name is stored as it is");
        bytes[at] ^= 1;
        std::fs::write(&file, &bytes).unwrap();
        assert!(matches!(
            verify_pages(dir.path()).unwrap(),
            Pages::Damaged(_)
        ));
        assert_eq!(std::fs::read(&file).unwrap(), bytes, "the file changed");
    }
}
