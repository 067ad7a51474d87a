//! In-memory input: pre-made lines per partition (the demo, tests and benchmarks).

use std::sync::Arc;

use super::{PartitionReader, RawRecord, ReadStatus, Watermarks};

/// Lines of every partition, shared by all workers of a process.
pub type PartitionLines = Arc<Vec<Vec<Vec<u8>>>>;

/// Reads the partitions assigned to one worker (`partition % peers == index`) from memory.
pub struct MemoryReader {
    lines: PartitionLines,
    next: Vec<(u32, usize)>,
}

impl MemoryReader {
    /// This worker's share of `lines` (partition `p` is `lines[p]`; offsets are indexes).
    pub fn new(lines: PartitionLines, index: usize, peers: usize) -> Self {
        let next = (0..lines.len())
            .filter(|p| p % peers.max(1) == index)
            .map(|p| (p as u32, 0))
            .collect();
        MemoryReader { lines, next }
    }
}

impl PartitionReader for MemoryReader {
    fn partitions(&self) -> Vec<u32> {
        self.next.iter().map(|(p, _)| *p).collect()
    }

    fn read(&mut self, marks: &mut Watermarks, budget: usize, out: &mut Vec<RawRecord>) -> Result<ReadStatus, String> {
        let Some(pid) = marks.laggard() else {
            return Ok(ReadStatus::Done);
        };
        let Some(slot) = self.next.iter_mut().find(|(p, _)| *p == pid) else {
            marks.end(pid);
            return Ok(ReadStatus::More);
        };
        let lines = &self.lines[pid as usize];
        let end = (slot.1 + budget).min(lines.len());
        for (i, line) in lines[slot.1..end].iter().enumerate() {
            out.push(RawRecord {
                partition: pid,
                offset: (slot.1 + i) as u64,
                bytes: line.clone(),
            });
        }
        slot.1 = end;
        if end == lines.len() {
            marks.end(pid);
        }
        if self.next.iter().all(|(p, n)| *n >= self.lines[*p as usize].len()) {
            Ok(ReadStatus::Done)
        } else {
            Ok(ReadStatus::More)
        }
    }
}
