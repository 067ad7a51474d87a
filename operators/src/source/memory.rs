//! In-memory input: pre-made lines per partition (the demo, tests and benchmarks).

use std::sync::Arc;
use std::time::Duration;

use super::{Cut, PartitionReader, RawRecord, ReadStatus, Watermarks};

/// Lines of every partition, shared by all workers of a process.
pub type PartitionLines = Arc<Vec<Vec<Vec<u8>>>>;

/// Reads the partitions assigned to one worker (`partition % peers == index`) from memory.
pub struct MemoryReader {
    lines: PartitionLines,
    next: Vec<(u32, usize)>,
    limit: Option<usize>,
    resume: Vec<Cut>,
}

/// How long a partition stopped at its limit asks to wait before the next read.
const LIMIT_IDLE: Duration = Duration::from_millis(5);

impl MemoryReader {
    /// This worker's share of `lines` (partition `p` is `lines[p]`; offsets are indexes).
    pub fn new(lines: PartitionLines, index: usize, peers: usize) -> Self {
        let next = (0..lines.len())
            .filter(|p| p % peers.max(1) == index)
            .map(|p| (p as u32, 0))
            .collect();
        MemoryReader {
            lines,
            next,
            limit: None,
            resume: Vec::new(),
        }
    }

    /// Delivers only the records at offsets below `limit` in each partition. A partition
    /// longer than that stops there without ending: it keeps holding the frontier and `read`
    /// returns [`ReadStatus::Idle`] when it is the one to read, like a live partition whose
    /// producer stalled (tests use this to stop a run at a known point). A partition of at
    /// most `limit` lines ends as usual.
    pub fn with_limit(mut self, limit: usize) -> Self {
        self.limit = Some(limit);
        self
    }

    /// Resumes like a restarted consumer from committed `cuts`: each of this worker's
    /// partitions that has a cut starts reading at the cut's offset, and those cuts are the
    /// reader's [`PartitionReader::resume_points`]. Cuts of other partitions are ignored.
    pub fn resume_from(mut self, cuts: &[Cut]) -> Self {
        self.resume = cuts
            .iter()
            .filter(|c| self.next.iter().any(|(p, _)| *p == c.partition))
            .cloned()
            .collect();
        for (p, next) in &mut self.next {
            if let Some(c) = self.resume.iter().find(|c| c.partition == *p) {
                *next = c.offset as usize;
            }
        }
        self
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
        let cap = self.limit.map_or(lines.len(), |l| l.min(lines.len()));
        if slot.1 >= cap && cap < lines.len() {
            return Ok(ReadStatus::Idle(LIMIT_IDLE));
        }
        let end = (slot.1 + budget).min(cap);
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

    fn resume_points(&self) -> Vec<Cut> {
        self.resume.clone()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn lines(lens: &[usize]) -> PartitionLines {
        Arc::new(
            lens.iter()
                .enumerate()
                .map(|(p, &n)| (0..n).map(|i| format!("{p}:{i}").into_bytes()).collect())
                .collect(),
        )
    }

    /// Reads once with `budget`; returns the status and the `(partition, offset)` pairs read.
    fn read(r: &mut MemoryReader, marks: &mut Watermarks, budget: usize) -> (ReadStatus, Vec<(u32, u64)>) {
        let mut out = Vec::new();
        let status = r.read(marks, budget, &mut out).unwrap();
        for rec in &out {
            assert_eq!(rec.bytes, format!("{}:{}", rec.partition, rec.offset).into_bytes());
        }
        (status, out.iter().map(|r| (r.partition, r.offset)).collect())
    }

    fn ended(marks: &Watermarks, p: u32) -> bool {
        marks.clocks().iter().any(|(q, c)| *q == p && c.ended)
    }

    #[test]
    fn reads_every_partition_to_the_end() {
        let mut r = MemoryReader::new(lines(&[3, 2]), 0, 1);
        let mut marks = Watermarks::new(60_000, 5_000, &r.partitions());
        assert_eq!(read(&mut r, &mut marks, 2), (ReadStatus::More, vec![(0, 0), (0, 1)]));
        assert_eq!(read(&mut r, &mut marks, 2), (ReadStatus::More, vec![(0, 2)]));
        assert!(ended(&marks, 0));
        assert_eq!(read(&mut r, &mut marks, 5), (ReadStatus::Done, vec![(1, 0), (1, 1)]));
        assert!(ended(&marks, 1));
        assert_eq!(read(&mut r, &mut marks, 5), (ReadStatus::Done, vec![]));
    }

    #[test]
    fn a_limit_stops_long_partitions_without_ending_them() {
        let mut r = MemoryReader::new(lines(&[10, 3]), 0, 1).with_limit(5);
        let mut marks = Watermarks::new(60_000, 5_000, &r.partitions());
        let (status, got) = read(&mut r, &mut marks, 100);
        assert_eq!(status, ReadStatus::More);
        assert_eq!(got, (0..5).map(|o| (0, o)).collect::<Vec<_>>());
        // Partition 0 stands at its limit: idle, not ended, nothing more delivered.
        assert_eq!(read(&mut r, &mut marks, 100), (ReadStatus::Idle(LIMIT_IDLE), vec![]));
        assert!(!ended(&marks, 0));
        // Once partition 0 is ahead in event time, partition 1 is read; it is shorter than
        // the limit and ends as usual.
        marks.observe(0, 600_000, 0);
        assert_eq!(
            read(&mut r, &mut marks, 100),
            (ReadStatus::More, vec![(1, 0), (1, 1), (1, 2)])
        );
        assert!(ended(&marks, 1));
        assert_eq!(read(&mut r, &mut marks, 100), (ReadStatus::Idle(LIMIT_IDLE), vec![]));
        assert!(!ended(&marks, 0));
    }

    #[test]
    fn a_limit_at_or_past_the_end_changes_nothing() {
        let mut r = MemoryReader::new(lines(&[4]), 0, 1).with_limit(4);
        let mut marks = Watermarks::new(60_000, 5_000, &r.partitions());
        let (status, got) = read(&mut r, &mut marks, 100);
        assert_eq!(status, ReadStatus::Done);
        assert_eq!(got.len(), 4);
        assert!(ended(&marks, 0));
    }

    #[test]
    fn resumes_this_workers_partitions_from_their_cuts() {
        let cut = |partition, offset| Cut {
            partition,
            offset,
            frontier: 1,
            max_ts: Some(1_000),
        };
        // Worker 1 of 2 reads partitions 1 and 3; the cut of partition 2 is not its own.
        let mut r = MemoryReader::new(lines(&[4, 4, 4, 4]), 1, 2).resume_from(&[cut(1, 3), cut(2, 1)]);
        assert_eq!(r.partitions(), vec![1, 3]);
        assert_eq!(r.resume_points(), vec![cut(1, 3)]);
        let mut marks = Watermarks::new(60_000, 5_000, &r.partitions());
        assert_eq!(read(&mut r, &mut marks, 100), (ReadStatus::More, vec![(1, 3)]));
        let (status, got) = read(&mut r, &mut marks, 100);
        assert_eq!(status, ReadStatus::Done);
        assert_eq!(got, (0..4).map(|o| (3, o)).collect::<Vec<_>>());
    }
}
