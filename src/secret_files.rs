//! Files named on the command line that hold secrets or certificates
//! (`--tls-cert`, `--tls-key`, `--admin-token-file`,
//! `--signing-secrets-file`): read with a size bound, and a warning when
//! other users can read a secret.

use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Largest such file read: far more than a certificate chain, a key or a
/// list of tokens needs, so a path such as `/dev/zero` fails instead of
/// filling memory.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// Reads the whole file, refusing one over [`MAX_FILE_BYTES`].
pub fn read(path: &Path) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than {MAX_FILE_BYTES} bytes"),
        ));
    }
    Ok(bytes)
}

/// Whether users other than the file's owner may read it (any group or
/// other permission bit set); `None` if its mode cannot be read.
#[must_use]
pub fn readable_by_others(path: &Path) -> Option<u32> {
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
    (mode & 0o077 != 0).then_some(mode)
}

/// Logs one warning if the secret in `path` (given with `flag`) can be
/// read by other users: a warning, not a refusal, since a group set up for
/// the purpose may be intended.
pub fn warn_if_readable_by_others(path: &Path, flag: &str) {
    if let Some(mode) = readable_by_others(path) {
        tracing::warn!(
            path = %path.display(),
            mode = format_args!("{mode:04o}"),
            "{flag} {} can be read by other users (mode {mode:04o}); make it readable by webhookd's user only (chmod 600)",
            path.display()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_or_other_bits_make_a_file_readable_by_others() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "x").unwrap();
        for (mode, exposed) in [(0o600, false), (0o400, false), (0o640, true), (0o604, true)] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            assert_eq!(readable_by_others(&path).is_some(), exposed, "{mode:o}");
        }
    }

    #[test]
    fn a_file_over_the_bound_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big");
        std::fs::write(&path, vec![b'a'; MAX_FILE_BYTES as usize + 1]).unwrap();
        assert_eq!(read(&path).unwrap_err().kind(), io::ErrorKind::InvalidData);
        std::fs::write(&path, vec![b'a'; MAX_FILE_BYTES as usize]).unwrap();
        assert_eq!(read(&path).unwrap().len(), MAX_FILE_BYTES as usize);
    }
}
