//! Docker's json-file log: one JSON object per message,
//! `{"log":"hi\n","stream":"stdout","time":"2024-01-02T03:04:05.123456789Z"}`, lines
//! split as Docker's copier splits them (at each newline and every 16 KiB of a longer
//! line; a partial last line at EOF), rotated with max-size / max-file.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use berth_rules::clock;

/// Docker's copier emits a message at most this long (a longer line becomes several).
pub const MAX_MESSAGE: usize = 16 * 1024;

/// Seconds and nanoseconds since the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Time {
    pub secs: i64,
    pub nanos: u32,
}

impl Time {
    pub fn now() -> Time {
        let (secs, nanos) = clock::now();
        Time { secs, nanos }
    }

    pub fn as_f64(&self) -> f64 {
        self.secs as f64 + self.nanos as f64 / 1e9
    }

    /// RFC 3339 in UTC. `fixed`: always nine fraction digits (Docker's
    /// RFC3339NanoFixed, used by `docker logs -t`); else Go's RFC3339Nano, trailing
    /// zeros dropped (the json-file "time" field).
    pub fn format(&self, fixed: bool) -> String {
        if fixed {
            clock::rfc3339_nano_fixed(self.secs, self.nanos)
        } else {
            clock::rfc3339_nano(self.secs, self.nanos)
        }
    }

    /// Parses RFC 3339 (`Z` or `+hh:mm` offsets, any number of fraction digits).
    pub fn parse(s: &str) -> Option<Time> {
        clock::parse_rfc3339(s).map(|(secs, nanos)| Time { secs, nanos })
    }
}

/// Appends `data` as a JSON string the way Docker's json-file writer does: `<`, `>`,
/// `&`, U+2028/9 and control characters escaped, invalid UTF-8 as U+FFFD.
pub fn escape_json(out: &mut Vec<u8>, data: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let mut rest = data;
    while !rest.is_empty() {
        let (valid, bad) = match std::str::from_utf8(rest) {
            Ok(s) => (s, 0),
            Err(e) => {
                let v = unsafe { std::str::from_utf8_unchecked(&rest[..e.valid_up_to()]) };
                (v, e.error_len().unwrap_or(rest.len() - e.valid_up_to()))
            }
        };
        for ch in valid.chars() {
            match ch {
                '"' => out.extend_from_slice(b"\\\""),
                '\\' => out.extend_from_slice(b"\\\\"),
                '\n' => out.extend_from_slice(b"\\n"),
                '\r' => out.extend_from_slice(b"\\r"),
                '\t' => out.extend_from_slice(b"\\t"),
                '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                    let c = ch as u32;
                    out.extend_from_slice(b"\\u");
                    for sh in [12, 8, 4, 0] {
                        out.push(HEX[((c >> sh) & 0xf) as usize]);
                    }
                }
                c if (c as u32) < 0x20 => {
                    out.extend_from_slice(b"\\u00");
                    out.push(HEX[(c as usize) >> 4]);
                    out.push(HEX[(c as usize) & 0xf]);
                }
                c => {
                    let mut b = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
                }
            }
        }
        rest = &rest[valid.len()..];
        if bad > 0 {
            out.extend_from_slice(b"\\ufffd");
            rest = &rest[bad..];
        }
    }
    out.push(b'"');
}

/// One json-file entry, newline included.
pub fn encode_entry(out: &mut Vec<u8>, stream: &str, msg: &[u8], t: Time) {
    out.extend_from_slice(b"{\"log\":");
    escape_json(out, msg);
    out.extend_from_slice(b",\"stream\":\"");
    out.extend_from_slice(stream.as_bytes());
    out.extend_from_slice(b"\",\"time\":\"");
    out.extend_from_slice(t.format(false).as_bytes());
    out.extend_from_slice(b"\"}\n");
}

/// A parsed entry (reader side).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct Entry {
    #[serde(default)]
    pub log: String,
    #[serde(default)]
    pub stream: String,
    pub time: String,
}

/// Splits a stream's bytes into Docker's messages.
#[derive(Debug, Default)]
pub struct LineSplitter {
    pending: Vec<u8>,
}

impl LineSplitter {
    /// Feeds bytes; `emit` gets every complete message (a line with its newline, or
    /// a 16 KiB piece of a longer line).
    pub fn feed(&mut self, mut data: &[u8], mut emit: impl FnMut(&[u8])) {
        while !data.is_empty() {
            let room = MAX_MESSAGE - self.pending.len();
            let window = &data[..data.len().min(room)];
            if let Some(nl) = window.iter().position(|&b| b == b'\n') {
                if self.pending.is_empty() {
                    emit(&data[..=nl]);
                } else {
                    self.pending.extend_from_slice(&data[..=nl]);
                    emit(&self.pending);
                    self.pending.clear();
                }
                data = &data[nl + 1..];
            } else if window.len() == room {
                if self.pending.is_empty() {
                    emit(window);
                } else {
                    self.pending.extend_from_slice(window);
                    emit(&self.pending);
                    self.pending.clear();
                }
                data = &data[room..];
            } else {
                self.pending.extend_from_slice(window);
                data = &[];
            }
        }
        if self.pending.is_empty() && self.pending.capacity() > MAX_MESSAGE {
            self.pending = Vec::new();
        }
    }

    /// At EOF: the partial last line, if any.
    pub fn flush(&mut self, mut emit: impl FnMut(&[u8])) {
        if !self.pending.is_empty() {
            emit(&self.pending);
            self.pending = Vec::new();
        }
    }
}

/// The shim's log: stdout and stderr messages appended to one file, rotated.
pub struct LogWriter {
    path: PathBuf,
    file: File,
    size: u64,
    max_size: Option<u64>,
    max_file: u32,
    splitters: [LineSplitter; 2],
    buf: Vec<u8>,
    /// A log-driver plugin's FIFO: every message goes there too.
    plugin: Option<crate::logdriver::FifoSink>,
}

const STREAM_NAMES: [&str; 2] = ["stdout", "stderr"];

impl LogWriter {
    pub fn open(path: &Path, max_size: Option<u64>, max_file: u32) -> io::Result<LogWriter> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(LogWriter {
            path: path.to_path_buf(),
            file,
            size,
            max_size: max_size.filter(|s| *s > 0),
            max_file: max_file.max(1),
            splitters: Default::default(),
            buf: Vec::new(),
            plugin: None,
        })
    }

    /// Sends every message to a log-driver plugin's FIFO as well.
    pub fn with_plugin(mut self, sink: crate::logdriver::FifoSink) -> LogWriter {
        self.plugin = Some(sink);
        self
    }

    pub fn plugin(&self) -> Option<&crate::logdriver::FifoSink> {
        self.plugin.as_ref()
    }

    pub fn plugin_mut(&mut self) -> Option<&mut crate::logdriver::FifoSink> {
        self.plugin.as_mut()
    }

    /// Logs bytes read from a stream (0 stdout, 1 stderr) at time `t`.
    pub fn write(&mut self, stream: usize, data: &[u8], t: Time) -> io::Result<()> {
        let mut sp = std::mem::take(&mut self.splitters[stream]);
        let mut res = Ok(());
        sp.feed(data, |m| {
            if res.is_ok() {
                res = self.entry(stream, m, t);
            }
        });
        self.splitters[stream] = sp;
        res?;
        self.flush_buf()
    }

    /// At EOF of a stream: writes its partial last line.
    pub fn close_stream(&mut self, stream: usize, t: Time) -> io::Result<()> {
        let mut sp = std::mem::take(&mut self.splitters[stream]);
        let mut res = Ok(());
        sp.flush(|m| res = self.entry(stream, m, t));
        res?;
        self.flush_buf()
    }

    fn entry(&mut self, stream: usize, msg: &[u8], t: Time) -> io::Result<()> {
        if let Some(p) = self.plugin.as_mut() {
            p.log(stream, msg, t);
        }
        if let Some(max) = self.max_size {
            if self.size + self.buf.len() as u64 >= max {
                self.flush_buf()?;
                self.rotate()?;
            }
        }
        encode_entry(&mut self.buf, STREAM_NAMES[stream], msg, t);
        Ok(())
    }

    fn flush_buf(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            self.file.write_all(&self.buf)?;
            self.size += self.buf.len() as u64;
            self.buf.clear();
            if self.buf.capacity() > 64 << 10 {
                self.buf = Vec::new();
            }
        }
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        if self.max_file >= 2 {
            for i in (1..self.max_file - 1).rev() {
                let from = rotated(&self.path, i);
                if from.exists() {
                    std::fs::rename(&from, rotated(&self.path, i + 1))?;
                }
            }
            std::fs::rename(&self.path, rotated(&self.path, 1))?;
            self.file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
        } else {
            self.file = OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(true)
                .open(&self.path)?;
        }
        self.size = 0;
        Ok(())
    }
}

/// `<path>.N`, the N-th rotated file.
pub fn rotated(path: &Path, n: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_format_and_parse() {
        let t = Time {
            secs: 1_700_000_000,
            nanos: 120_000_000,
        };
        assert_eq!(t.format(false), "2023-11-14T22:13:20.12Z");
        assert_eq!(t.format(true), "2023-11-14T22:13:20.120000000Z");
        assert_eq!(
            Time { secs: 0, nanos: 0 }.format(false),
            "1970-01-01T00:00:00Z"
        );
        assert_eq!(Time::parse("2023-11-14T22:13:20.12Z"), Some(t));
        assert_eq!(Time::parse("2023-11-14T23:13:20.120000000+01:00"), Some(t));
        assert_eq!(
            Time::parse("2000-02-29T00:00:00Z").unwrap().format(false),
            "2000-02-29T00:00:00Z"
        );
        assert_eq!(Time::parse("nope"), None);
        let now = Time::now();
        assert_eq!(Time::parse(&now.format(false)), Some(now));
    }

    #[test]
    fn escapes_like_docker() {
        let mut o = Vec::new();
        escape_json(
            &mut o,
            b"a\"b\\c\n\t\r\x01<>&\xe2\x80\xa8 \xff\xfeok \xc3\xa9",
        );
        assert_eq!(
            String::from_utf8(o).unwrap(),
            r#""a\"b\\c\n\t\r\u0001\u003c\u003e\u0026\u2028 \ufffd\ufffdok é""#
        );
        let mut e = Vec::new();
        encode_entry(&mut e, "stdout", b"hi\n", Time { secs: 0, nanos: 5 });
        assert_eq!(String::from_utf8(e).unwrap(), "{\"log\":\"hi\\n\",\"stream\":\"stdout\",\"time\":\"1970-01-01T00:00:00.000000005Z\"}\n");
    }

    #[test]
    fn splits_lines() {
        let mut s = LineSplitter::default();
        let mut got: Vec<Vec<u8>> = Vec::new();
        s.feed(b"a\nb", |m| got.push(m.to_vec()));
        s.feed(b"c\n\nd", |m| got.push(m.to_vec()));
        assert_eq!(got, vec![b"a\n".to_vec(), b"bc\n".to_vec(), b"\n".to_vec()]);
        got.clear();
        let long = vec![b'x'; MAX_MESSAGE * 2 + 10];
        s.feed(&long, |m| got.push(m.to_vec()));
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].len(), MAX_MESSAGE);
        assert_eq!(got[0][0], b'd');
        s.flush(|m| got.push(m.to_vec()));
        assert_eq!(got[2].len(), 11);
        let total: usize = got.iter().map(|g| g.len()).sum();
        assert_eq!(total, long.len() + 1);
    }

    #[test]
    fn writes_and_rotates() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("c-json.log");
        let mut w = LogWriter::open(&p, Some(200), 3).unwrap();
        let t = Time { secs: 1, nanos: 0 };
        for i in 0..20 {
            w.write(i % 2, format!("line {i}\n").as_bytes(), t).unwrap();
        }
        w.write(0, b"partial", t).unwrap();
        w.close_stream(0, t).unwrap();
        assert!(rotated(&p, 1).exists());
        assert!(rotated(&p, 2).exists());
        assert!(!rotated(&p, 3).exists());
        let cur = std::fs::read_to_string(&p).unwrap();
        let last: Entry = serde_json::from_str(cur.lines().last().unwrap()).unwrap();
        assert_eq!(last.log, "partial");
        assert_eq!(last.stream, "stdout");
        for f in [p.clone(), rotated(&p, 1)] {
            assert!(std::fs::metadata(&f).unwrap().len() < 200 + 100);
        }
        // max-file 1 truncates.
        let p1 = tmp.path().join("one.log");
        let mut w = LogWriter::open(&p1, Some(100), 1).unwrap();
        for i in 0..10 {
            w.write(0, format!("line {i}\n").as_bytes(), t).unwrap();
        }
        assert!(!rotated(&p1, 1).exists());
        assert!(std::fs::metadata(&p1).unwrap().len() < 200);
    }
}
