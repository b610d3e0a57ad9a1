//! Token shard files: a 32-byte header, then raw little-endian token ids.
//!
//! ```text
//! offset  size  field
//!  0      8     magic  b"HYMBATOK"
//!  8      4     version (u32 LE) = 1
//! 12      4     dtype: bytes per token (u32 LE), 2 = u16, 4 = u32
//! 16      8     count: number of tokens (u64 LE)
//! 24      8     tokenizer hash (u64 LE, see `Tokenizer::hash`)
//! 32      ...   count × dtype bytes of token ids, little-endian
//! ```
//!
//! Shards are read through a memory map, so a training window is a slice, not a parse.

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use serde::{Deserialize, Serialize};

use crate::durable;
use crate::error::{DataError, Result};

/// The first 8 bytes of every shard.
pub const SHARD_MAGIC: [u8; 8] = *b"HYMBATOK";
/// The shard format version this build writes and reads.
pub const SHARD_VERSION: u32 = 1;
/// Header length in bytes; token data starts here.
pub const HEADER_LEN: usize = 32;

/// How token ids are stored: `u16` when the vocabulary fits (≤ 65,536 ids), else `u32`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenDtype {
    /// 2 bytes per token.
    U16,
    /// 4 bytes per token.
    U32,
}

impl TokenDtype {
    /// The smallest dtype that holds every id of a vocabulary of `vocab_size` ids.
    pub fn for_vocab(vocab_size: usize) -> Self {
        if vocab_size <= 1 << 16 {
            TokenDtype::U16
        } else {
            TokenDtype::U32
        }
    }

    /// Bytes per token (also the header's dtype code).
    pub fn bytes(self) -> usize {
        match self {
            TokenDtype::U16 => 2,
            TokenDtype::U32 => 4,
        }
    }

    /// `"u16"` or `"u32"`.
    pub fn name(self) -> &'static str {
        match self {
            TokenDtype::U16 => "u16",
            TokenDtype::U32 => "u32",
        }
    }

    fn from_code(code: u32) -> Option<Self> {
        match code {
            2 => Some(TokenDtype::U16),
            4 => Some(TokenDtype::U32),
            _ => None,
        }
    }
}

impl std::fmt::Display for TokenDtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The decoded shard header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardHeader {
    /// Token storage type.
    pub dtype: TokenDtype,
    /// Number of tokens in the shard.
    pub count: u64,
    /// Hash of the tokenizer that produced the ids.
    pub tokenizer_hash: u64,
}

impl ShardHeader {
    /// The 32 header bytes.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(&SHARD_MAGIC);
        b[8..12].copy_from_slice(&SHARD_VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&(self.dtype.bytes() as u32).to_le_bytes());
        b[16..24].copy_from_slice(&self.count.to_le_bytes());
        b[24..32].copy_from_slice(&self.tokenizer_hash.to_le_bytes());
        b
    }

    /// Parses and checks the header at the start of `bytes` (`path` is for error messages).
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Self> {
        if bytes.len() < HEADER_LEN {
            return Err(DataError::Truncated {
                path: path.to_owned(),
                expected: HEADER_LEN as u64,
                found: bytes.len() as u64,
            });
        }
        let mut magic = [0u8; 8];
        magic.copy_from_slice(&bytes[0..8]);
        if magic != SHARD_MAGIC {
            return Err(DataError::BadMagic {
                path: path.to_owned(),
                found: magic,
                expected: SHARD_MAGIC,
            });
        }
        let u32_at =
            |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
        let u64_at = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&bytes[i..i + 8]);
            u64::from_le_bytes(w)
        };
        let version = u32_at(8);
        if version != SHARD_VERSION {
            return Err(DataError::BadVersion {
                path: path.to_owned(),
                found: version,
                expected: SHARD_VERSION,
            });
        }
        let code = u32_at(12);
        let dtype = TokenDtype::from_code(code).ok_or_else(|| DataError::BadDtype {
            path: path.to_owned(),
            found: format!("code {code}"),
            expected: "2 (u16) or 4 (u32)".into(),
        })?;
        Ok(Self {
            dtype,
            count: u64_at(16),
            tokenizer_hash: u64_at(24),
        })
    }
}

impl ShardHeader {
    /// Parses the header of a whole shard file's `bytes` and checks that the file's length
    /// matches the header's token count.
    pub fn check_file(bytes: &[u8], path: &Path) -> Result<Self> {
        let header = Self::parse(bytes, path)?;
        let data = (bytes.len() - HEADER_LEN) as u64;
        let width = header.dtype.bytes() as u64;
        if !data.is_multiple_of(width) || data / width != header.count {
            return Err(DataError::Truncated {
                path: path.to_owned(),
                expected: header.count,
                found: data / width,
            });
        }
        Ok(header)
    }
}

/// Writes one shard: tokens are streamed to `<path>.tmp`, and [`ShardWriter::finish`] fills in
/// the header's count, flushes the file to the disk and only then renames it to `path`. A
/// shard dropped unfinished (or a crash) leaves no file under the final name.
pub struct ShardWriter {
    file: BufWriter<File>,
    /// The final name; the file is written under [`durable::with_suffix`]`(path, ".tmp")`.
    path: PathBuf,
    dtype: TokenDtype,
    tokenizer_hash: u64,
    count: u64,
}

impl ShardWriter {
    /// Starts the shard `path` (written as `<path>.tmp` until [`ShardWriter::finish`]).
    pub fn create(path: impl AsRef<Path>, dtype: TokenDtype, tokenizer_hash: u64) -> Result<Self> {
        let path = path.as_ref().to_owned();
        let tmp = durable::with_suffix(&path, ".tmp");
        let file = File::create(&tmp).map_err(|e| DataError::io(&tmp, e))?;
        let mut file = BufWriter::with_capacity(1 << 20, file);
        let header = ShardHeader {
            dtype,
            count: 0,
            tokenizer_hash,
        };
        file.write_all(&header.to_bytes())
            .map_err(|e| DataError::io(&path, e))?;
        Ok(Self {
            file,
            path,
            dtype,
            tokenizer_hash,
            count: 0,
        })
    }

    /// Appends tokens. Fails if an id does not fit the dtype.
    pub fn write(&mut self, ids: &[u32]) -> Result<()> {
        let mut buf = Vec::with_capacity(ids.len() * self.dtype.bytes());
        match self.dtype {
            TokenDtype::U16 => {
                for &id in ids {
                    let v = u16::try_from(id)
                        .map_err(|_| DataError::TokenOutOfRange { id, dtype: "u16" })?;
                    buf.extend_from_slice(&v.to_le_bytes());
                }
            }
            TokenDtype::U32 => {
                for &id in ids {
                    buf.extend_from_slice(&id.to_le_bytes());
                }
            }
        }
        self.file
            .write_all(&buf)
            .map_err(|e| DataError::io(&self.path, e))?;
        self.count += ids.len() as u64;
        Ok(())
    }

    /// Tokens written so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Writes the final header, flushes the file to the disk and renames it to its final
    /// name; returns the token count.
    pub fn finish(mut self) -> Result<u64> {
        let header = ShardHeader {
            dtype: self.dtype,
            count: self.count,
            tokenizer_hash: self.tokenizer_hash,
        };
        let io = |e| DataError::io(&self.path, e);
        self.file.flush().map_err(io)?;
        let file = self.file.get_mut();
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        file.write_all(&header.to_bytes()).map_err(io)?;
        file.sync_all().map_err(io)?;
        durable::commit(&durable::with_suffix(&self.path, ".tmp"), &self.path)?;
        Ok(self.count)
    }
}

/// One memory-mapped shard, checked on open.
pub struct Shard {
    path: PathBuf,
    header: ShardHeader,
    mmap: Mmap,
}

impl std::fmt::Debug for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shard")
            .field("path", &self.path)
            .field("header", &self.header)
            .finish()
    }
}

impl Shard {
    /// Opens and maps `path`, checking the magic, version, dtype code and that the file
    /// length matches the header's count.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_owned();
        let file = File::open(&path).map_err(|e| DataError::io(&path, e))?;
        // SAFETY: the map is read-only; shards are written once by `prepare` and never
        // modified in place. Truncating a shard while it is mapped is a user error that
        // can fault the process (as with any mmap-based loader).
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| DataError::io(&path, e))?;
        let header = ShardHeader::check_file(&mmap, &path)?;
        Ok(Self { path, header, mmap })
    }

    /// Opens `path` and also checks its dtype and tokenizer hash against what is expected.
    pub fn open_expecting(
        path: impl AsRef<Path>,
        dtype: TokenDtype,
        tokenizer_hash: u64,
    ) -> Result<Self> {
        Self::open(path)?.expect(dtype, tokenizer_hash)
    }

    /// Checks an open shard's dtype and tokenizer hash.
    pub fn expect(self, dtype: TokenDtype, tokenizer_hash: u64) -> Result<Self> {
        let shard = self;
        if shard.header.dtype != dtype {
            return Err(DataError::BadDtype {
                path: shard.path,
                found: shard.header.dtype.to_string(),
                expected: dtype.to_string(),
            });
        }
        if shard.header.tokenizer_hash != tokenizer_hash {
            return Err(DataError::TokenizerMismatch {
                path: shard.path,
                found: shard.header.tokenizer_hash,
                expected: tokenizer_hash,
            });
        }
        Ok(shard)
    }

    /// The shard's header.
    pub fn header(&self) -> &ShardHeader {
        &self.header
    }

    /// The shard's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of tokens.
    pub fn len(&self) -> u64 {
        self.header.count
    }

    /// Whether the shard holds no tokens.
    pub fn is_empty(&self) -> bool {
        self.header.count == 0
    }

    /// Copies tokens `start .. start + out.len()` into `out`.
    pub fn read(&self, start: u64, out: &mut [u32]) -> Result<()> {
        let end = start.checked_add(out.len() as u64);
        if end.is_none_or(|end| end > self.header.count) {
            return Err(DataError::Invalid(format!(
                "{}: tokens {start}..{start}+{} out of range (shard has {})",
                self.path.display(),
                out.len(),
                self.header.count
            )));
        }
        let width = self.header.dtype.bytes();
        let from = HEADER_LEN + start as usize * width;
        let bytes = &self.mmap[from..from + out.len() * width];
        match self.header.dtype {
            TokenDtype::U16 => {
                for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *o = u32::from(u16::from_le_bytes([b[0], b[1]]));
                }
            }
            TokenDtype::U32 => {
                for (o, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                    *o = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                }
            }
        }
        Ok(())
    }

    /// All tokens as a vector (for tests and small shards).
    pub fn to_vec(&self) -> Result<Vec<u32>> {
        let mut out = vec![0; self.header.count as usize];
        self.read(0, &mut out)?;
        Ok(out)
    }
}
