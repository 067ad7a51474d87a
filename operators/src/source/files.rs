//! Replay input: one JSON-lines file per partition, in partition order.
//!
//! Lines are split on `\n` and one trailing `\r` is removed. Zero-length lines are skipped and
//! not counted, but they do count in the offset (the 0-based line index within the file).

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::time::Duration;

use super::{PartitionReader, RawRecord, ReadStatus, Watermarks};

struct Partition {
    id: u32,
    path: PathBuf,
    reader: Option<BufReader<File>>,
    line: u64,
}

/// Reads the files of the partitions assigned to one worker (`partition % peers == index`).
pub struct FileReader {
    parts: Vec<Partition>,
    buf: Vec<u8>,
}

impl FileReader {
    /// Opens this worker's share of `paths` (partition `p` is `paths[p]`). Errors name the path.
    pub fn open(paths: &[PathBuf], index: usize, peers: usize) -> Result<FileReader, String> {
        let mut parts = Vec::new();
        for (p, path) in paths.iter().enumerate() {
            if p % peers.max(1) != index {
                continue;
            }
            let file = File::open(path).map_err(|e| format!("cannot open input {}: {e}", path.display()))?;
            let reader = Some(BufReader::with_capacity(1 << 20, file));
            parts.push(Partition {
                id: p as u32,
                path: path.clone(),
                reader,
                line: 0,
            });
        }
        Ok(FileReader {
            parts,
            buf: Vec::with_capacity(1024),
        })
    }

    /// A reader of no partition (its worker drops its capability at once).
    pub fn empty() -> FileReader {
        FileReader {
            parts: Vec::new(),
            buf: Vec::new(),
        }
    }

    /// Checks every input can be opened (for a clear error before any dataflow starts).
    pub fn check(paths: &[PathBuf]) -> Result<(), String> {
        for path in paths {
            File::open(path).map_err(|e| format!("cannot open input {}: {e}", path.display()))?;
        }
        Ok(())
    }
}

/// `BufRead::read_until(b'\n', buf)`, with a SIMD search for the newline (`read_until`
/// looks at one byte at a time): appends the next line, newline included, to `buf` and returns
/// its length (0 at the end of the input).
fn read_line(reader: &mut impl BufRead, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    let mut total = 0;
    loop {
        let available = match reader.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let (done, used) = match memchr::memchr(b'\n', available) {
            Some(i) => {
                buf.extend_from_slice(&available[..=i]);
                (true, i + 1)
            }
            None => {
                buf.extend_from_slice(available);
                (available.is_empty(), available.len())
            }
        };
        reader.consume(used);
        total += used;
        if done {
            return Ok(total);
        }
    }
}

impl PartitionReader for FileReader {
    fn partitions(&self) -> Vec<u32> {
        self.parts.iter().map(|p| p.id).collect()
    }

    fn read(&mut self, marks: &mut Watermarks, budget: usize, out: &mut Vec<RawRecord>) -> Result<ReadStatus, String> {
        // Read the partition that lags most, so partitions advance together in event time.
        let Some(pid) = marks.laggard() else {
            return Ok(ReadStatus::Done);
        };
        let Some(part) = self.parts.iter_mut().find(|p| p.id == pid) else {
            marks.end(pid);
            return Ok(ReadStatus::More);
        };
        let Some(reader) = part.reader.as_mut() else {
            marks.end(pid);
            return Ok(ReadStatus::More);
        };
        let mut read = 0;
        while read < budget {
            self.buf.clear();
            let n = read_line(reader, &mut self.buf)
                .map_err(|e| format!("cannot read input {}: {e}", part.path.display()))?;
            if n == 0 {
                part.reader = None;
                marks.end(pid);
                break;
            }
            let offset = part.line;
            part.line += 1;
            let mut line = &self.buf[..];
            if let Some(l) = line.strip_suffix(b"\n") {
                line = l;
            }
            if let Some(l) = line.strip_suffix(b"\r") {
                line = l;
            }
            if line.is_empty() {
                continue;
            }
            out.push(RawRecord {
                partition: pid,
                offset,
                bytes: line.to_vec(),
            });
            read += 1;
        }
        if self.parts.iter().all(|p| p.reader.is_none()) {
            Ok(ReadStatus::Done)
        } else if read == 0 && out.is_empty() {
            Ok(ReadStatus::Idle(Duration::ZERO))
        } else {
            Ok(ReadStatus::More)
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Every line as `read_until` gives it, whatever the buffer size (lines cut across
    /// refills), with and without a final newline, with empty lines and `\r`.
    #[test]
    fn read_line_splits_like_read_until() {
        let inputs: [&[u8]; 5] = [
            b"",
            b"\n",
            b"one\ntwo\r\n\nthree",
            b"a long line that spans several small buffers\nshort\n",
            b"\n\nx\n\n",
        ];
        for input in inputs {
            for capacity in [1, 2, 3, 7, 64] {
                let mut ours = BufReader::with_capacity(capacity, input);
                let mut std = BufReader::with_capacity(capacity, input);
                loop {
                    let (mut a, mut b) = (Vec::new(), Vec::new());
                    let n = read_line(&mut ours, &mut a).unwrap();
                    let m = std.read_until(b'\n', &mut b).unwrap();
                    assert_eq!((n, &a), (m, &b), "{input:?} with a {capacity}-byte buffer");
                    if n == 0 {
                        break;
                    }
                }
            }
        }
    }
}
