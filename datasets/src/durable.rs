//! Files that survive crashes and say when they are damaged.
//!
//! Two tools shared by `prepare` (token shards) and the trainer (step checkpoints):
//! - **durable writes**: a file is written under a temporary name, flushed to the disk
//!   (`fsync`), renamed over its final name, and the folder is flushed too, so that after a
//!   crash or power loss either the old or the new file is there, never a torn one;
//! - **checksums**: a [`Checksums`] list (size and XXH3-64 of each file) written next to the
//!   files it covers and checked before they are used, so that a truncated or bit-flipped
//!   file is named in one clear error instead of failing somewhere deep in a load.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::Xxh3;

use crate::error::{DataError, Result};

/// Name of the checksum list inside a checked folder.
pub const CHECKSUMS_FILE: &str = "checksums.json";

/// Flushes a file's data and metadata to the disk.
pub fn sync_file(path: &Path) -> Result<()> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| DataError::io(path, e))
}

/// Flushes a folder's entries (names created, renamed or removed in it) to the disk.
///
/// Without this a rename can be lost in a power cut even though the renamed file's data
/// reached the disk.
pub fn sync_dir(path: &Path) -> Result<()> {
    // Opening a directory read-only and calling fsync on it is how POSIX flushes its
    // entries; other systems have no such call and flush on their own.
    if cfg!(unix) {
        File::open(path)
            .and_then(|f| f.sync_all())
            .map_err(|e| DataError::io(path, e))?;
    }
    Ok(())
}

/// The folder holding `path` (`.` for a bare file name).
fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// `path` with `suffix` appended to its file name (`a.json` → `a.json.tmp`).
pub fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

/// Writes `bytes` to `path` durably: a temporary file, fsync, rename, fsync of the folder.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = with_suffix(path, ".tmp");
    let mut file = File::create(&tmp).map_err(|e| DataError::io(&tmp, e))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| DataError::io(&tmp, e))?;
    drop(file);
    commit(&tmp, path)
}

/// Renames a finished (and already flushed) `tmp` to `path` and flushes the folder.
pub fn commit(tmp: &Path, path: &Path) -> Result<()> {
    std::fs::rename(tmp, path).map_err(|e| DataError::io(path, e))?;
    sync_dir(parent_of(path))
}

/// Flushes every file directly in `dir`, then `dir` itself: a folder written by several
/// writers (a recorder, a serializer…) made durable before it is renamed into place.
pub fn sync_tree(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))? {
        let path = entry.map_err(|e| DataError::io(dir, e))?.path();
        if path.is_file() {
            sync_file(&path)?;
        }
    }
    sync_dir(dir)
}

/// Swaps the finished, flushed folder `tmp` in as `dir`. An existing `dir` is first renamed
/// to `<dir>.old` and removed only once `tmp` is in place, so a crash leaves the old folder
/// (perhaps as `.old`, which the caller's recovery puts back) or the new one, never neither.
/// `stage` is called after each rename with `"old-set-aside"` and `"renamed"`: the points
/// where the crash tests kill the writer.
pub fn replace_dir(tmp: &Path, dir: &Path, mut stage: impl FnMut(&'static str)) -> Result<()> {
    let old = with_suffix(dir, ".old");
    if dir.exists() {
        std::fs::rename(dir, &old).map_err(|e| DataError::io(dir, e))?;
        stage("old-set-aside");
    }
    commit(tmp, dir)?;
    stage("renamed");
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(|e| DataError::io(&old, e))?;
    }
    Ok(())
}

/// Size and checksum of one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSum {
    /// Length in bytes.
    pub bytes: u64,
    /// XXH3-64 of the contents, as 16 hex digits.
    #[serde(with = "crate::manifest::hex_u64")]
    pub xxh3: u64,
}

impl FileSum {
    /// Reads `path` once and returns its size and checksum.
    pub fn of(path: &Path) -> Result<Self> {
        let mut file = File::open(path).map_err(|e| DataError::io(path, e))?;
        let mut hasher = Xxh3::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut bytes = 0u64;
        loop {
            let n = file.read(&mut buf).map_err(|e| DataError::io(path, e))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            bytes += n as u64;
        }
        Ok(Self {
            bytes,
            xxh3: hasher.digest(),
        })
    }

    /// Checks `path` against this sum; the error says what differs.
    pub fn check(&self, path: &Path) -> Result<()> {
        let damaged = |reason: String| DataError::Damaged {
            path: path.to_owned(),
            reason,
        };
        let len = std::fs::metadata(path)
            .map_err(|e| damaged(format!("cannot be read ({e})")))?
            .len();
        if len != self.bytes {
            return Err(damaged(format!(
                "{len} bytes where {} were written (truncated or overwritten)",
                self.bytes
            )));
        }
        let found = Self::of(path)?;
        if found.xxh3 != self.xxh3 {
            return Err(damaged(format!(
                "checksum {:016x} where {:016x} was written (the contents changed)",
                found.xxh3, self.xxh3
            )));
        }
        Ok(())
    }
}

/// The sizes and checksums of the files in one folder (`checksums.json`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checksums {
    /// File name (relative to the folder) → its sum.
    pub files: BTreeMap<String, FileSum>,
}

impl Checksums {
    /// Sums `names` in `dir`.
    pub fn of(dir: &Path, names: &[&str]) -> Result<Self> {
        let mut files = BTreeMap::new();
        for name in names {
            files.insert(name.to_string(), FileSum::of(&dir.join(name))?);
        }
        Ok(Self { files })
    }

    /// Parses a checksum list (`path` labels errors).
    pub fn from_json_str(text: &str, path: &Path) -> Result<Self> {
        serde_json::from_str(text).map_err(|e| DataError::Damaged {
            path: path.to_owned(),
            reason: format!("not a checksum list ({e})"),
        })
    }

    /// Writes `checksums.json` into `dir` durably.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let path = dir.join(CHECKSUMS_FILE);
        let mut text = serde_json::to_string_pretty(self).map_err(|e| DataError::Damaged {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        text.push('\n');
        write_atomic(&path, text.as_bytes())
    }

    /// Reads `dir`'s `checksums.json` and checks every file it lists. A folder without the
    /// list is incomplete: the list is written last.
    pub fn verify(dir: &Path) -> Result<Self> {
        let path = dir.join(CHECKSUMS_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| DataError::Damaged {
            path: path.clone(),
            reason: format!("cannot be read ({e}); the folder was not completely written"),
        })?;
        let sums = Self::from_json_str(&text, &path)?;
        for (name, sum) in &sums.files {
            let plain = Path::new(name).components().count() == 1 && name != "..";
            if !plain {
                return Err(DataError::Damaged {
                    path: path.clone(),
                    reason: format!("lists `{name}`, which is not a file in the folder"),
                });
            }
            sum.check(&dir.join(name))?;
        }
        Ok(sums)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flipped_bit_and_a_cut_are_both_named() {
        let dir = tempfile::tempdir().expect("temp dir");
        let a = dir.path().join("a.bin");
        write_atomic(&a, &[7u8; 1000]).expect("write");
        Checksums::of(dir.path(), &["a.bin"])
            .and_then(|s| s.write(dir.path()))
            .expect("sums");
        Checksums::verify(dir.path()).expect("intact");

        let mut bytes = std::fs::read(&a).expect("read");
        bytes[500] ^= 0x10;
        std::fs::write(&a, &bytes).expect("flip");
        let e = Checksums::verify(dir.path()).expect_err("flip found");
        assert!(
            e.to_string().contains("a.bin") && e.to_string().contains("checksum"),
            "{e}"
        );

        std::fs::write(&a, &bytes[..999]).expect("cut");
        let e = Checksums::verify(dir.path()).expect_err("cut found");
        assert!(e.to_string().contains("999 bytes where 1000"), "{e}");

        std::fs::remove_file(dir.path().join(CHECKSUMS_FILE)).expect("rm");
        let e = Checksums::verify(dir.path()).expect_err("no list");
        assert!(e.to_string().contains("not completely written"), "{e}");
    }

    #[test]
    fn sums_name_only_files_in_the_folder() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(
            dir.path().join(CHECKSUMS_FILE),
            r#"{"files":{"../x":{"bytes":1,"xxh3":"0000000000000000"}}}"#,
        )
        .expect("write");
        let e = Checksums::verify(dir.path()).expect_err("escape refused");
        assert!(e.to_string().contains("not a file in the folder"), "{e}");
    }
}
