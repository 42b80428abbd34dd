//! A strict tar reader (ustar, GNU long names, PAX) that keeps every raw byte it
//! reads so the stream can be reproduced exactly (tar-split), and refuses absurd
//! headers: bad checksums, unparsable numbers, oversized extension records, names
//! longer than PATH_MAX, unsupported entry types. Reading follows Go's archive/tar
//! (what Docker uses), e.g. header-only types carry no data whatever their size says.

use std::io::Read;

pub const BLOCK: usize = 512;
/// Largest PAX extended header we accept (xattrs are at most 64 KiB each).
pub const MAX_PAX: u64 = 1 << 20;
pub const PATH_MAX: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum TarError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

fn invalid(m: impl Into<String>) -> TarError {
    TarError::Invalid(m.into())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryType {
    File,
    HardLink,
    Symlink,
    Char,
    Block,
    Dir,
    Fifo,
    /// A PAX global header: recorded, otherwise ignored (as Docker does).
    GlobalHeader,
}

#[derive(Debug, Clone)]
pub struct Entry {
    pub typ: EntryType,
    /// The name as in the archive (after PAX/GNU overrides), not yet cleaned.
    pub name: Vec<u8>,
    pub linkname: Vec<u8>,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    /// Bytes of data that follow the header(s) (0 for header-only types).
    pub size: u64,
    pub mtime: (i64, u32),
    pub atime: Option<(i64, u32)>,
    pub devmajor: u32,
    pub devminor: u32,
    pub xattrs: Vec<(String, Vec<u8>)>,
}

/// Reads entries; the caller reads each entry's data with [`TarReader::read_data`]
/// (or skips it) before asking for the next. Every byte read is passed to `raw`
/// except entry data, which the caller sees itself.
pub struct TarReader<R: Read> {
    r: R,
    /// Data bytes of the current entry not yet read, then its padding.
    remaining: u64,
    padding: usize,
    pub raw: Vec<u8>,
    done: bool,
}

impl<R: Read> TarReader<R> {
    pub fn new(r: R) -> Self {
        TarReader {
            r,
            remaining: 0,
            padding: 0,
            raw: Vec::with_capacity(4096),
            done: false,
        }
    }

    pub fn into_inner(self) -> R {
        self.r
    }

    pub fn inner_mut(&mut self) -> &mut R {
        &mut self.r
    }

    /// Read exactly `buf.len()` bytes or fail on a short stream. `Ok(false)` means a
    /// clean EOF before the first byte.
    fn fill(&mut self, buf: &mut [u8]) -> Result<bool, TarError> {
        let mut n = 0;
        while n < buf.len() {
            match self.r.read(&mut buf[n..]) {
                Ok(0) => {
                    if n == 0 {
                        return Ok(false);
                    }
                    return Err(invalid("unexpected end of layer data (truncated tar)"));
                }
                Ok(k) => n += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(true)
    }

    fn block(&mut self) -> Result<Option<[u8; BLOCK]>, TarError> {
        let mut b = [0u8; BLOCK];
        if !self.fill(&mut b)? {
            return Ok(None);
        }
        self.raw.extend_from_slice(&b);
        Ok(Some(b))
    }

    /// Read `size` bytes of extension data (plus padding) into memory, bounded.
    fn ext_data(&mut self, size: u64, max: u64, what: &str) -> Result<Vec<u8>, TarError> {
        if size > max {
            return Err(invalid(format!(
                "{what} of {size} bytes is larger than the {max} allowed"
            )));
        }
        let padded = (size as usize).div_ceil(BLOCK) * BLOCK;
        let mut v = vec![0u8; padded];
        if !self.fill(&mut v)? && padded > 0 {
            return Err(invalid("unexpected end of layer data (truncated tar)"));
        }
        self.raw.extend_from_slice(&v);
        v.truncate(size as usize);
        Ok(v)
    }

    /// Skip whatever is left of the current entry's data and its padding; both go to
    /// `raw`, so data the caller did not take is still reproduced by tar-split.
    pub fn finish_entry(&mut self) -> Result<(), TarError> {
        let mut buf = [0u8; 16384];
        while self.remaining > 0 {
            let n = (self.remaining as usize).min(buf.len());
            let got = self.read_data(&mut buf[..n])?;
            self.raw.extend_from_slice(&buf[..got]);
        }
        if self.padding > 0 {
            let mut p = [0u8; BLOCK];
            let n = self.padding;
            if !self.fill(&mut p[..n])? {
                return Err(invalid("unexpected end of layer data (truncated tar)"));
            }
            self.raw.extend_from_slice(&p[..n]);
            self.padding = 0;
        }
        Ok(())
    }

    /// Read data of the current entry; 0 at its end.
    pub fn read_data(&mut self, buf: &mut [u8]) -> Result<usize, TarError> {
        if self.remaining == 0 {
            return Ok(0);
        }
        let n = (self.remaining.min(buf.len() as u64)) as usize;
        let k = loop {
            match self.r.read(&mut buf[..n]) {
                Ok(k) => break k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        };
        if k == 0 {
            return Err(invalid(
                "unexpected end of layer data: an entry is larger than the stream",
            ));
        }
        self.remaining -= k as u64;
        Ok(k)
    }

    /// The next entry, or None at the end of the archive. After the end, the rest of
    /// the stream is read into `raw` as well (bounded by the caller's stream).
    pub fn next_entry(&mut self) -> Result<Option<Entry>, TarError> {
        self.finish_entry()?;
        if self.done {
            return Ok(None);
        }
        let mut long_name: Option<Vec<u8>> = None;
        let mut long_link: Option<Vec<u8>> = None;
        let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
        loop {
            let Some(h) = self.block()? else {
                self.done = true;
                return Ok(None);
            };
            if h.iter().all(|b| *b == 0) {
                // End of archive: a second zero block, or EOF. Keep any trailing bytes.
                self.done = true;
                let mut rest = Vec::new();
                self.r.read_to_end(&mut rest)?;
                self.raw.extend_from_slice(&rest);
                if long_name.is_some() || long_link.is_some() || !pax.is_empty() {
                    return Err(invalid(
                        "extension header without an entry at the end of the archive",
                    ));
                }
                return Ok(None);
            }
            verify_checksum(&h)?;
            let flag = h[156];
            let size = parse_num(&h[124..136], "size")?;
            match flag {
                b'L' => {
                    long_name = Some(trim_nul(self.ext_data(
                        size,
                        PATH_MAX as u64 + 1,
                        "GNU long name",
                    )?));
                    continue;
                }
                b'K' => {
                    long_link = Some(trim_nul(self.ext_data(
                        size,
                        PATH_MAX as u64 + 1,
                        "GNU long link name",
                    )?));
                    continue;
                }
                b'x' => {
                    let data = self.ext_data(size, MAX_PAX, "PAX extended header")?;
                    pax.extend(parse_pax(&data)?);
                    continue;
                }
                _ => {}
            }
            let typ = match flag {
                b'0' | 0 | b'7' => EntryType::File,
                b'1' => EntryType::HardLink,
                b'2' => EntryType::Symlink,
                b'3' => EntryType::Char,
                b'4' => EntryType::Block,
                b'5' => EntryType::Dir,
                b'6' => EntryType::Fifo,
                b'g' => EntryType::GlobalHeader,
                b'S' => return Err(invalid("sparse files (GNU type 'S') are not supported")),
                other => {
                    return Err(invalid(format!(
                        "unsupported tar entry type {:?}",
                        other as char
                    )));
                }
            };
            let ustar = &h[257..263] == b"ustar\0";
            let mut name = cstr_field(&h[0..100]);
            if ustar {
                let prefix = cstr_field(&h[345..500]);
                if !prefix.is_empty() {
                    let mut p = prefix;
                    p.push(b'/');
                    p.extend_from_slice(&name);
                    name = p;
                }
            }
            let mut e = Entry {
                typ,
                name,
                linkname: cstr_field(&h[157..257]),
                mode: parse_num(&h[100..108], "mode")? as u32,
                uid: parse_num(&h[108..116], "uid")?,
                gid: parse_num(&h[116..124], "gid")?,
                size,
                mtime: (parse_num(&h[136..148], "mtime")? as i64, 0),
                atime: None,
                devmajor: parse_num(&h[329..337], "devmajor")? as u32,
                devminor: parse_num(&h[337..345], "devminor")? as u32,
                xattrs: Vec::new(),
            };
            if typ == EntryType::GlobalHeader {
                let data = self.ext_data(size, MAX_PAX, "PAX global header")?;
                parse_pax(&data)?;
                e.size = 0;
                return Ok(Some(e));
            }
            if let Some(n) = long_name {
                e.name = n;
            }
            if let Some(l) = long_link {
                e.linkname = l;
            }
            for (k, v) in pax {
                let s = || String::from_utf8_lossy(&v).into_owned();
                match k.as_str() {
                    "path" => e.name = v,
                    "linkpath" => e.linkname = v,
                    "size" => {
                        e.size = s()
                            .parse()
                            .map_err(|_| invalid(format!("invalid PAX size {:?}", s())))?
                    }
                    "uid" => {
                        e.uid = s()
                            .parse()
                            .map_err(|_| invalid(format!("invalid PAX uid {:?}", s())))?
                    }
                    "gid" => {
                        e.gid = s()
                            .parse()
                            .map_err(|_| invalid(format!("invalid PAX gid {:?}", s())))?
                    }
                    "mtime" => e.mtime = parse_pax_time(&s())?,
                    "atime" => e.atime = Some(parse_pax_time(&s())?),
                    k if k.starts_with("SCHILY.xattr.") => {
                        e.xattrs.push((k["SCHILY.xattr.".len()..].to_string(), v));
                    }
                    k if k.starts_with("GNU.sparse.") => {
                        return Err(invalid("sparse files (PAX GNU.sparse) are not supported"));
                    }
                    _ => {}
                }
            }
            if e.name.len() > PATH_MAX || e.linkname.len() > PATH_MAX {
                return Err(invalid(format!(
                    "entry name of {} bytes is longer than PATH_MAX",
                    e.name.len().max(e.linkname.len())
                )));
            }
            if e.name.contains(&0) || e.linkname.contains(&0) {
                return Err(invalid("entry name contains a NUL byte"));
            }
            if matches!(
                typ,
                EntryType::HardLink
                    | EntryType::Symlink
                    | EntryType::Char
                    | EntryType::Block
                    | EntryType::Dir
                    | EntryType::Fifo
            ) {
                e.size = 0; // Go's archive/tar: header-only types have no data.
            }
            self.remaining = e.size;
            self.padding = ((BLOCK as u64 - e.size % BLOCK as u64) % BLOCK as u64) as usize;
            return Ok(Some(e));
        }
    }
}

fn trim_nul(mut v: Vec<u8>) -> Vec<u8> {
    while v.last() == Some(&0) {
        v.pop();
    }
    v
}

fn cstr_field(f: &[u8]) -> Vec<u8> {
    let end = f.iter().position(|b| *b == 0).unwrap_or(f.len());
    f[..end].to_vec()
}

fn verify_checksum(h: &[u8; BLOCK]) -> Result<(), TarError> {
    let want = parse_num(&h[148..156], "checksum")?;
    let mut unsigned: u64 = 0;
    let mut signed: i64 = 0;
    for (i, b) in h.iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { *b };
        unsigned += b as u64;
        signed += (b as i8) as i64;
    }
    if want != unsigned && want as i64 != signed {
        return Err(invalid("tar header checksum mismatch"));
    }
    Ok(())
}

/// Octal (NUL/space terminated) or base-256 (high bit set) numbers.
pub fn parse_num(f: &[u8], what: &str) -> Result<u64, TarError> {
    if f.first().is_some_and(|b| b & 0x80 != 0) {
        if f[0] & 0x40 != 0 {
            return Err(invalid(format!("negative {what} in tar header")));
        }
        let mut v: u64 = (f[0] & 0x3f) as u64;
        for b in &f[1..] {
            if v >> 56 != 0 {
                return Err(invalid(format!("{what} in tar header is too large")));
            }
            v = (v << 8) | *b as u64;
        }
        if v > i64::MAX as u64 {
            return Err(invalid(format!("{what} in tar header is too large")));
        }
        return Ok(v);
    }
    let s: Vec<u8> = f
        .iter()
        .copied()
        .skip_while(|b| *b == b' ' || *b == 0)
        .take_while(|b| *b != 0 && *b != b' ')
        .collect();
    if s.is_empty() {
        return Ok(0);
    }
    let st =
        std::str::from_utf8(&s).map_err(|_| invalid(format!("invalid {what} in tar header")))?;
    u64::from_str_radix(st, 8).map_err(|_| invalid(format!("invalid {what} {st:?} in tar header")))
}

fn parse_pax(data: &[u8]) -> Result<Vec<(String, Vec<u8>)>, TarError> {
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        if rest.iter().all(|b| *b == 0) {
            break;
        }
        let sp = rest
            .iter()
            .position(|b| *b == b' ')
            .ok_or_else(|| invalid("malformed PAX record"))?;
        let len: usize = std::str::from_utf8(&rest[..sp])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| invalid("malformed PAX record length"))?;
        if len <= sp + 1 || len > rest.len() || rest[len - 1] != b'\n' {
            return Err(invalid("malformed PAX record"));
        }
        let rec = &rest[sp + 1..len - 1];
        let eq = rec
            .iter()
            .position(|b| *b == b'=')
            .ok_or_else(|| invalid("malformed PAX record"))?;
        let key = String::from_utf8(rec[..eq].to_vec())
            .map_err(|_| invalid("malformed PAX record key"))?;
        out.push((key, rec[eq + 1..].to_vec()));
        rest = &rest[len..];
    }
    Ok(out)
}

fn parse_pax_time(s: &str) -> Result<(i64, u32), TarError> {
    let bad = || invalid(format!("invalid PAX time {s:?}"));
    let (secs, frac) = match s.split_once('.') {
        Some((a, b)) => (a, b),
        None => (s, ""),
    };
    let secs: i64 = secs.parse().map_err(|_| bad())?;
    let mut nanos = 0u32;
    if !frac.is_empty() {
        if !frac.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let f: String = frac.chars().chain(std::iter::repeat('0')).take(9).collect();
        nanos = f.parse().map_err(|_| bad())?;
    }
    Ok((secs, nanos))
}

/// Writing: a ustar header for `e`, with a PAX header first when a field does not fit.
pub fn write_header(out: &mut Vec<u8>, e: &Entry) {
    let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
    let (name, prefix) = split_name(&e.name);
    let name_fits = name.is_some();
    if !name_fits {
        pax.push(("path".into(), e.name.clone()));
    }
    if e.linkname.len() > 100 {
        pax.push(("linkpath".into(), e.linkname.clone()));
    }
    if e.size > 0o77777777777 {
        pax.push(("size".into(), e.size.to_string().into_bytes()));
    }
    if e.uid > 0o7777777 {
        pax.push(("uid".into(), e.uid.to_string().into_bytes()));
    }
    if e.gid > 0o7777777 {
        pax.push(("gid".into(), e.gid.to_string().into_bytes()));
    }
    for (k, v) in &e.xattrs {
        pax.push((format!("SCHILY.xattr.{k}"), v.clone()));
    }
    if !pax.is_empty() {
        let mut data = Vec::new();
        for (k, v) in &pax {
            let body_len = k.len() + v.len() + 3; // ' ' '=' '\n'
            let mut len = body_len + 1;
            loop {
                let total = body_len + len.to_string().len();
                if total == len {
                    break;
                }
                len = total;
            }
            data.extend_from_slice(len.to_string().as_bytes());
            data.push(b' ');
            data.extend_from_slice(k.as_bytes());
            data.push(b'=');
            data.extend_from_slice(v);
            data.push(b'\n');
        }
        let mut ph = [0u8; BLOCK];
        let pname = b"././@PaxHeader";
        ph[..pname.len()].copy_from_slice(pname);
        put_octal(&mut ph[100..108], 0o644);
        put_octal(&mut ph[108..116], 0);
        put_octal(&mut ph[116..124], 0);
        put_octal(&mut ph[124..136], data.len() as u64);
        put_octal(&mut ph[136..148], e.mtime.0.max(0) as u64);
        ph[156] = b'x';
        ph[257..263].copy_from_slice(b"ustar\0");
        ph[263..265].copy_from_slice(b"00");
        finish_checksum(&mut ph);
        out.extend_from_slice(&ph);
        out.extend_from_slice(&data);
        pad(out, data.len() as u64);
    }
    let mut h = [0u8; BLOCK];
    match name {
        Some(n) => {
            h[..n.len()].copy_from_slice(n);
            if let Some(p) = prefix {
                h[345..345 + p.len()].copy_from_slice(p);
            }
        }
        None => {
            let n = &e.name[..e.name.len().min(100)];
            h[..n.len()].copy_from_slice(n);
        }
    }
    put_octal(&mut h[100..108], (e.mode & 0o7777) as u64);
    put_octal(&mut h[108..116], e.uid.min(0o7777777));
    put_octal(&mut h[116..124], e.gid.min(0o7777777));
    put_octal(
        &mut h[124..136],
        if e.size > 0o77777777777 { 0 } else { e.size },
    );
    put_octal(&mut h[136..148], e.mtime.0.clamp(0, 0o77777777777) as u64);
    h[156] = match e.typ {
        EntryType::File => b'0',
        EntryType::HardLink => b'1',
        EntryType::Symlink => b'2',
        EntryType::Char => b'3',
        EntryType::Block => b'4',
        EntryType::Dir => b'5',
        EntryType::Fifo => b'6',
        EntryType::GlobalHeader => b'g',
    };
    let l = &e.linkname[..e.linkname.len().min(100)];
    h[157..157 + l.len()].copy_from_slice(l);
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    if matches!(e.typ, EntryType::Char | EntryType::Block) {
        put_octal(&mut h[329..337], e.devmajor as u64);
        put_octal(&mut h[337..345], e.devminor as u64);
    }
    finish_checksum(&mut h);
    out.extend_from_slice(&h);
}

/// Zero padding after `size` bytes of data.
pub fn pad(out: &mut Vec<u8>, size: u64) {
    let p = ((BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64) as usize;
    out.extend(std::iter::repeat_n(0u8, p));
}

/// The end of an archive: two zero blocks.
pub fn trailer(out: &mut Vec<u8>) {
    out.extend(std::iter::repeat_n(0u8, 2 * BLOCK));
}

fn split_name(name: &[u8]) -> (Option<&[u8]>, Option<&[u8]>) {
    if name.len() <= 100 {
        return (Some(name), None);
    }
    if name.len() > 256 {
        return (None, None);
    }
    // ustar: prefix (<=155) + '/' + name (<=100)
    for (i, b) in name.iter().enumerate().rev() {
        if *b == b'/' && i <= 155 && name.len() - i - 1 <= 100 && i > 0 {
            return (Some(&name[i + 1..]), Some(&name[..i]));
        }
    }
    (None, None)
}

fn put_octal(f: &mut [u8], v: u64) {
    let w = f.len() - 1;
    let s = format!("{v:0w$o}");
    let s = s.as_bytes();
    let s = &s[s.len().saturating_sub(w)..];
    f[..s.len()].copy_from_slice(s);
    f[w] = 0;
}

fn finish_checksum(h: &mut [u8; BLOCK]) {
    h[148..156].copy_from_slice(b"        ");
    let sum: u64 = h.iter().map(|b| *b as u64).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, typ: EntryType, size: u64) -> Entry {
        Entry {
            typ,
            name: name.as_bytes().to_vec(),
            linkname: vec![],
            mode: 0o644,
            uid: 0,
            gid: 0,
            size,
            mtime: (1_700_000_000, 0),
            atime: None,
            devmajor: 0,
            devminor: 0,
            xattrs: vec![],
        }
    }

    #[test]
    fn writes_what_it_reads() {
        let long = format!("{}/{}", "d".repeat(120), "f".repeat(150));
        let mut out = Vec::new();
        let mut e = entry(&long, EntryType::File, 5);
        e.xattrs.push(("user.k".into(), b"v".to_vec()));
        write_header(&mut out, &e);
        out.extend_from_slice(b"hello");
        pad(&mut out, 5);
        write_header(&mut out, &entry("a/b", EntryType::Dir, 0));
        trailer(&mut out);
        let mut r = TarReader::new(&out[..]);
        let got = r.next_entry().unwrap().unwrap();
        assert_eq!(got.name, long.as_bytes());
        assert_eq!(got.xattrs, vec![("user.k".to_string(), b"v".to_vec())]);
        let mut buf = [0u8; 10];
        assert_eq!(r.read_data(&mut buf).unwrap(), 5);
        assert_eq!(&buf[..5], b"hello");
        assert_eq!(r.next_entry().unwrap().unwrap().typ, EntryType::Dir);
        assert!(r.next_entry().unwrap().is_none());
        // The tar crate reads our output too.
        let mut a = tar::Archive::new(&out[..]);
        let names: Vec<_> = a
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().into_owned())
            .collect();
        assert_eq!(names.len(), 2);
    }

    #[test]
    fn reads_gnu_and_base256() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(3);
        h.set_mode(0o600);
        h.set_uid(3_000_000_000); // base-256 in GNU headers
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, "x".repeat(300), &b"abc"[..]).unwrap();
        let data = b.into_inner().unwrap();
        let mut r = TarReader::new(&data[..]);
        let e = r.next_entry().unwrap().unwrap();
        assert_eq!(e.name.len(), 300);
        assert_eq!(e.uid, 3_000_000_000);
        assert!(r.next_entry().unwrap().is_none());
        assert_eq!(r.raw.len(), data.len(), "skipped data is kept raw");
    }

    #[test]
    fn refuses_bad_checksums() {
        let mut out = Vec::new();
        write_header(&mut out, &entry("a", EntryType::File, 0));
        out[0] = b'b';
        trailer(&mut out);
        let e = TarReader::new(&out[..]).next_entry().unwrap_err();
        assert!(e.to_string().contains("checksum"), "{e}");
    }
}
