//! tar-split: what it takes to reproduce a layer's tar byte for byte (so its digest
//! is the layer's diff_id again on save and push). Every byte of the stream that is
//! not file data is kept as is; file data is a reference to the file in the layer.
//! Stored zstd-compressed as a sequence of records:
//! `R <u32 len> <bytes>` raw bytes, `F <u32 len> <path> <u64 size>` file data.

use std::io::{Read, Write};
use std::path::Path;

pub struct SplitWriter {
    enc: zstd::stream::write::Encoder<'static, Vec<u8>>,
}

impl Default for SplitWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl SplitWriter {
    pub fn new() -> SplitWriter {
        SplitWriter {
            enc: zstd::stream::write::Encoder::new(Vec::new(), 1).expect("zstd encoder"),
        }
    }

    pub fn raw(&mut self, b: &[u8]) {
        for chunk in b.chunks(u32::MAX as usize) {
            if chunk.is_empty() {
                continue;
            }
            let _ = self.enc.write_all(b"R");
            let _ = self.enc.write_all(&(chunk.len() as u32).to_le_bytes());
            let _ = self.enc.write_all(chunk);
        }
    }

    pub fn file(&mut self, path: &[u8], size: u64) {
        let _ = self.enc.write_all(b"F");
        let _ = self.enc.write_all(&(path.len() as u32).to_le_bytes());
        let _ = self.enc.write_all(path);
        let _ = self.enc.write_all(&size.to_le_bytes());
    }

    pub fn finish(self) -> std::io::Result<Vec<u8>> {
        self.enc.finish()
    }
}

#[derive(Debug)]
pub enum Record {
    Raw(Vec<u8>),
    File { path: Vec<u8>, size: u64 },
}

/// Iterate over the records of a stored tar-split.
pub struct SplitReader<R: Read> {
    dec: zstd::stream::read::Decoder<'static, std::io::BufReader<R>>,
}

impl<R: Read> SplitReader<R> {
    pub fn new(r: R) -> std::io::Result<Self> {
        Ok(SplitReader {
            dec: zstd::stream::read::Decoder::new(r)?,
        })
    }

    pub fn next_record(&mut self) -> std::io::Result<Option<Record>> {
        let mut tag = [0u8; 1];
        match self.dec.read(&mut tag)? {
            0 => return Ok(None),
            _ => {}
        }
        let mut l = [0u8; 4];
        self.dec.read_exact(&mut l)?;
        let len = u32::from_le_bytes(l) as usize;
        let mut b = vec![0u8; len];
        self.dec.read_exact(&mut b)?;
        match tag[0] {
            b'R' => Ok(Some(Record::Raw(b))),
            b'F' => {
                let mut s = [0u8; 8];
                self.dec.read_exact(&mut s)?;
                Ok(Some(Record::File {
                    path: b,
                    size: u64::from_le_bytes(s),
                }))
            }
            _ => Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "corrupt tar-split record",
            )),
        }
    }
}

/// Rebuild the tar stream: raw bytes as they were, file data read from `root`
/// (resolved without following symlinks). `out` receives chunks of at most `chunk` bytes.
pub fn replay(
    split: impl Read,
    root: &Path,
    chunk: usize,
    out: &mut dyn FnMut(Vec<u8>) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let mut rd = SplitReader::new(split)?;
    let root_fd = crate::apply::open_root(root)?;
    let mut pending: Vec<u8> = Vec::with_capacity(chunk);
    while let Some(rec) = rd.next_record()? {
        match rec {
            Record::Raw(b) => {
                for part in b.chunks(chunk) {
                    if pending.len() + part.len() > chunk {
                        out(std::mem::replace(&mut pending, Vec::with_capacity(chunk)))?;
                    }
                    pending.extend_from_slice(part);
                }
            }
            Record::File { path, size } => {
                let mut f = crate::apply::open_in_root(&root_fd, &path)?;
                let mut left = size;
                while left > 0 {
                    if pending.len() == chunk {
                        out(std::mem::replace(&mut pending, Vec::with_capacity(chunk)))?;
                    }
                    let room = (chunk - pending.len()).min(left as usize);
                    let start = pending.len();
                    pending.resize(start + room, 0);
                    let n = f.read(&mut pending[start..])?;
                    pending.truncate(start + n);
                    if n == 0 {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            format!(
                                "layer file {:?} is shorter than recorded",
                                String::from_utf8_lossy(&path)
                            ),
                        ));
                    }
                    left -= n as u64;
                }
            }
        }
    }
    if !pending.is_empty() {
        out(pending)?;
    }
    Ok(())
}
