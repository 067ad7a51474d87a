//! File sinks: snapshots as JSON lines sorted by `(window, session_id, line)`, dead letters
//! sorted by `(partition, offset)`. Both write to a temporary file that is renamed into place
//! only when the run completes, so a failed run never leaves a half-written file looking whole;
//! a device or pipe (`--output /dev/null`, `/dev/stdout`) is written directly.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::mpsc::SyncSender;
use std::thread::JoinHandle;

use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::StreamVec;

use crate::record::DeadLetter;
use crate::session::Snapshot;

/// A JSON-lines output file written under a temporary name and renamed by [`LineFile::finish`].
/// A path that exists and is not a regular file (`/dev/null`, `/dev/stdout`, a FIFO) is written
/// directly: renaming a temporary file onto it would replace the device (as root, `/dev/null`
/// itself) with a regular file.
///
/// Lines are written on the caller's thread ([`LineFile::write_line`]), or handed over in
/// batches to a writer thread of the file's own ([`LineFile::write_lines`]), so that the worker
/// writing the run's snapshots does not also spend its time copying them to the kernel.
pub struct LineFile {
    path: PathBuf,
    /// The temporary file renamed into place, or `None` when writing `path` directly.
    tmp: Option<PathBuf>,
    /// What writes the lines; on the writer thread while there is one.
    core: Option<Core>,
    /// The writer thread, once [`LineFile::write_lines`] started it.
    writer: Option<Writer>,
    /// Why the lines handed to the writer thread may not all be written (it failed).
    lost: Option<String>,
    /// Flushed and synced by [`LineFile::prepare`], waiting for [`LineFile::commit`].
    prepared: bool,
}

/// The writing half of a [`LineFile`]: the buffered file and what was written to it.
struct Core {
    path: PathBuf,
    /// Whether the file is a regular (temporary) file, which early writeback applies to.
    regular: bool,
    out: Option<BufWriter<File>>,
    error: Option<String>,
    /// Lines written so far.
    lines: u64,
    /// Bytes written so far (lines and their newlines).
    bytes: u64,
    /// Bytes before this offset were handed to the kernel with advice to write them back.
    advised: u64,
    /// [`WRITE_BACK_EVERY`] (smaller in tests).
    write_back_every: u64,
}

/// A [`LineFile`]'s writer thread: it owns the [`Core`] until it is joined.
struct Writer {
    tx: SyncSender<Vec<String>>,
    /// Gives the core back (`None` if it never received it).
    thread: JoinHandle<Option<Core>>,
}

/// Every this many bytes written, a regular output file's latest bytes are handed to the
/// kernel's writeback (see [`Core::write_back_early`]).
const WRITE_BACK_EVERY: u64 = 64 << 20;

/// Batches waiting for the writer thread beyond the one it writes: one, so that the worker
/// prepares the next window while the thread writes the last, and a slow disk holds back the
/// worker (as a direct write would) instead of piling windows up in memory.
const WRITER_QUEUE: usize = 1;

impl LineFile {
    /// Creates `path.tmp` (or opens `path` itself when it is a device or a pipe); the error
    /// names the path.
    pub fn create(path: &Path) -> Result<LineFile, String> {
        let fail = |e: std::io::Error| format!("cannot create output {}: {e}", path.display());
        let special = std::fs::metadata(path).is_ok_and(|m| !m.is_file() && !m.is_dir());
        let (tmp, file) = if special {
            (None, std::fs::OpenOptions::new().write(true).open(path).map_err(fail)?)
        } else {
            let mut tmp = path.as_os_str().to_owned();
            tmp.push(".tmp");
            let tmp = PathBuf::from(tmp);
            let file = File::create(&tmp).map_err(fail)?;
            (Some(tmp), file)
        };
        Ok(LineFile {
            path: path.to_path_buf(),
            core: Some(Core {
                path: path.to_path_buf(),
                regular: tmp.is_some(),
                out: Some(BufWriter::with_capacity(1 << 20, file)),
                error: None,
                lines: 0,
                bytes: 0,
                advised: 0,
                write_back_every: WRITE_BACK_EVERY,
            }),
            tmp,
            writer: None,
            lost: None,
            prepared: false,
        })
    }

    /// Appends one line (a newline is added) on this thread, after the lines handed to the
    /// writer thread, if any. The first error is kept and reported by `finish`.
    pub fn write_line(&mut self, line: &[u8]) {
        self.join_writer();
        if let Some(core) = self.core.as_mut() {
            core.write_line(line);
        }
    }

    /// Hands `lines` (each without its newline) to the file's writer thread, started on the
    /// first call, which appends them in order; waits only while the thread is a batch
    /// behind (see `WRITER_QUEUE`). The first error is kept and reported by `finish`.
    pub fn write_lines(&mut self, lines: Vec<String>) {
        if self.writer.is_none() {
            self.start_writer();
        }
        match &self.writer {
            Some(w) => {
                if let Err(back) = w.tx.send(lines) {
                    // The thread is gone (it failed): join reports why.
                    self.join_writer();
                    self.lost.get_or_insert_with(|| {
                        format!("cannot write output {}: its writer thread stopped", self.path.display())
                    });
                    drop(back);
                }
            }
            // No thread could be started: written here instead.
            None => {
                if let Some(core) = self.core.as_mut() {
                    core.write_lines(&lines);
                }
            }
        }
    }

    /// Moves the core to a new writer thread (it stays here when no thread can be started).
    fn start_writer(&mut self) {
        let Some(mut core) = self.core.take() else { return };
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<String>>(WRITER_QUEUE);
        let (core_tx, core_rx) = std::sync::mpsc::channel::<Core>();
        let spawned = std::thread::Builder::new().name("line-file".into()).spawn(move || {
            let mut core = core_rx.recv().ok()?;
            for batch in rx {
                core.write_lines(&batch);
            }
            Some(core)
        });
        match spawned {
            Ok(thread) => {
                // The thread is waiting for it: sending cannot fail.
                if let Err(back) = core_tx.send(core) {
                    core = back.0;
                    self.core = Some(core);
                    return;
                }
                self.writer = Some(Writer { tx, thread });
            }
            Err(_) => self.core = Some(core),
        }
    }

    /// Waits for the writer thread, if any, to write what it was handed, and takes the core
    /// back.
    fn join_writer(&mut self) {
        let Some(Writer { tx, thread }) = self.writer.take() else {
            return;
        };
        drop(tx);
        match thread.join() {
            Ok(Some(core)) => self.core = Some(core),
            Ok(None) | Err(_) => {
                self.lost.get_or_insert_with(|| {
                    format!("cannot write output {}: its writer thread failed", self.path.display())
                });
            }
        }
    }

    /// Flushes, syncs and renames the file into place (a device or pipe is only flushed).
    /// On an error the temporary file is removed.
    pub fn finish(&mut self) -> Result<(), String> {
        self.prepare()?;
        self.commit()
    }

    /// The first half of [`LineFile::finish`]: flushes and syncs, so that only the rename is
    /// left. On an error the temporary file is removed.
    pub fn prepare(&mut self) -> Result<(), String> {
        let result = self.flush_and_sync();
        if result.is_err() {
            self.abandon();
        }
        result
    }

    fn flush_and_sync(&mut self) -> Result<(), String> {
        self.join_writer();
        if let Some(e) = self.lost.take() {
            return Err(e);
        }
        let Some(core) = self.core.as_mut() else {
            return Err(format!("output {} already finished", self.path.display()));
        };
        if let Some(e) = core.error.take() {
            return Err(e);
        }
        let Some(out) = core.out.take() else {
            return Err(format!("output {} already finished", self.path.display()));
        };
        let fail = |e: std::io::Error| format!("cannot write output {}: {e}", self.path.display());
        let file = out.into_inner().map_err(|e| fail(e.into_error()))?;
        if self.tmp.is_some() {
            file.sync_all().map_err(fail)?;
        }
        self.prepared = true;
        Ok(())
    }

    /// The second half of [`LineFile::finish`]: renames the prepared file into place.
    pub fn commit(&mut self) -> Result<(), String> {
        if !std::mem::take(&mut self.prepared) {
            return Err(format!("output {} is not prepared", self.path.display()));
        }
        match &self.tmp {
            Some(tmp) => std::fs::rename(tmp, &self.path).map_err(|e| {
                let _ = std::fs::remove_file(tmp);
                format!("cannot write output {}: {e}", self.path.display())
            }),
            None => Ok(()),
        }
    }

    /// Removes the temporary file (after a failed run).
    pub fn abandon(&mut self) {
        self.join_writer();
        if let Some(core) = self.core.as_mut() {
            core.out = None;
        }
        self.prepared = false;
        if let Some(tmp) = &self.tmp {
            let _ = std::fs::remove_file(tmp);
        }
    }
}

impl Drop for LineFile {
    /// The writer thread never outlives its file: it finishes what it was handed first.
    fn drop(&mut self) {
        self.join_writer();
    }
}

impl Core {
    /// Appends one line (a newline is added). The first error is kept.
    fn write_line(&mut self, line: &[u8]) {
        if let Some(out) = self.out.as_mut() {
            if let Err(e) = out.write_all(line).and_then(|_| out.write_all(b"\n")) {
                self.error = Some(format!("cannot write output {}: {e}", self.path.display()));
                self.out = None;
            } else {
                self.lines += 1;
                self.bytes += line.len() as u64 + 1;
                if self.bytes - self.advised >= self.write_back_every {
                    self.write_back_early();
                }
            }
        }
    }

    /// Appends each of `lines` as [`Core::write_line`] does.
    fn write_lines(&mut self, lines: &[String]) {
        for line in lines {
            self.write_line(line.as_bytes());
        }
    }

    /// Starts the kernel writing back what this file handed it since the last call, without
    /// waiting (`POSIX_FADV_DONTNEED`, which on Linux first starts writeback of the range's
    /// dirty pages, then drops its clean ones: the output is not read again). The final sync
    /// then has only the file's last bytes to wait for: it took 0.33 s for a 724 MB snapshot
    /// file, all of them dirty until then (see docs/performance.md). Only advice: a failure
    /// (a device or a pipe) changes nothing.
    fn write_back_early(&mut self) {
        let Some(out) = self.out.as_ref() else { return };
        // What the buffer handed over since the last call (maybe nothing yet).
        let handed = self.bytes - out.buffer().len() as u64;
        let Some(len) = std::num::NonZeroU64::new(handed.saturating_sub(self.advised)) else {
            return;
        };
        #[cfg(target_os = "linux")]
        if self.regular {
            let _ = rustix::fs::fadvise(out.get_ref(), self.advised, Some(len), rustix::fs::Advice::DontNeed);
        }
        #[cfg(not(target_os = "linux"))]
        let _ = len;
        self.advised = handed;
    }
}

/// Finishes a run's output files together: every file is flushed and synced first, and only
/// if all of them were written are they renamed into place. A file that cannot be written
/// (a full disk) thus replaces none of them, and leaves no temporary file behind.
pub fn finish_all<'a>(files: impl IntoIterator<Item = &'a RefCell<LineFile>>) -> Result<(), String> {
    let files: Vec<&RefCell<LineFile>> = files.into_iter().collect();
    let prepared = files.iter().try_for_each(|f| f.borrow_mut().prepare());
    if let Err(e) = prepared {
        files.iter().for_each(|f| f.borrow_mut().abandon());
        return Err(e);
    }
    let mut result = Ok(());
    for f in &files {
        if result.is_ok() {
            result = f.borrow_mut().commit();
        } else {
            f.borrow_mut().abandon();
        }
    }
    result
}

/// A shared handle on a [`LineFile`], owned by the worker that writes it.
pub type SharedLineFile = Rc<RefCell<LineFile>>;

/// Extension trait: `snapshots.sink_snapshot_file(file)`.
pub trait SinkSnapshotFile<'scope> {
    /// Routes every snapshot to worker 0, which writes each window once the frontier passed it,
    /// sorted by `(session_id, line)`: the file is sorted by `(window, session_id, line)` and
    /// byte-identical for any number of workers. Workers other than 0 pass `None`. The lines
    /// go to the file's writer thread ([`LineFile::write_lines`]): worker 0 does not copy the
    /// run's output to the kernel itself (on a slow disk it waits, a window behind).
    /// Returns an empty stream whose frontier is the handed-over frontier (to probe); the
    /// output is durable only once [`LineFile::finish`] (or [`finish_all`]) returned.
    ///
    /// ```
    /// use sessionflow_operators::sink::files::{LineFile, SinkSnapshotFile};
    /// use sessionflow_operators::session::Snapshot;
    /// use timely::dataflow::operators::{Probe, ToStream};
    /// use std::{cell::RefCell, rc::Rc};
    ///
    /// let dir = std::env::temp_dir().join(format!("sf-doc-{}", std::process::id()));
    /// std::fs::create_dir_all(&dir).unwrap();
    /// let path = dir.join("out.jsonl");
    /// let snap = |id: &str| Snapshot { session_id: id.into(), gap_based: false, project_id: 1,
    ///     visitor_id: "v".into(), start: 0, end: 0, event_count: 1, revenue: 0,
    ///     experiments: vec![], window: 0, closed: true, opened_window: 0, opened_project: 1, merged_into: None,
    ///     json: format!("{{\"session_id\":\"{id}\"}}"), state: None };
    /// let p = path.clone();
    /// // The file handle is per worker (`Rc`), so it is made inside the worker.
    /// timely::execute_directly(move |worker| {
    ///     let file = Rc::new(RefCell::new(LineFile::create(&p).unwrap()));
    ///     let f = Some(file.clone());
    ///     let probe = worker.dataflow::<u64, _, _>(move |scope| {
    ///         vec![snap("b"), snap("a")].to_stream(scope).sink_snapshot_file(f).probe().0
    ///     });
    ///     while !probe.done() { worker.step(); }
    ///     file.borrow_mut().finish().unwrap();
    /// });
    /// let text = std::fs::read_to_string(&path).unwrap();
    /// assert_eq!(text, "{\"session_id\":\"a\"}\n{\"session_id\":\"b\"}\n");
    /// ```
    fn sink_snapshot_file(self, file: Option<SharedLineFile>) -> StreamVec<'scope, u64, ()>;
}

impl<'scope> SinkSnapshotFile<'scope> for StreamVec<'scope, u64, Snapshot> {
    fn sink_snapshot_file(self, file: Option<SharedLineFile>) -> StreamVec<'scope, u64, ()> {
        self.unary_frontier::<CapacityContainerBuilder<Vec<()>>, _, _, _>(
            Exchange::new(|_: &Snapshot| 0u64),
            "SnapshotFile",
            move |_cap, _info| {
                let mut windows: BTreeMap<u64, Vec<(crate::event::CompactString, String)>> = BTreeMap::new();
                move |(input, frontier), _output| {
                    input.for_each(|time, data| {
                        let Some(&t) = time.least() else { return };
                        let slot = windows.entry(t).or_default();
                        slot.extend(data.drain(..).map(|s| (s.session_id, s.json)));
                    });
                    while let Some(entry) = windows.first_entry() {
                        if frontier.less_equal(entry.key()) {
                            break;
                        }
                        let mut lines = entry.remove();
                        lines.sort_unstable();
                        if let Some(f) = &file {
                            // Written by the file's own thread: this worker goes on with its
                            // sessions while the window's lines are copied to the kernel.
                            f.borrow_mut()
                                .write_lines(lines.into_iter().map(|(_, json)| json).collect());
                        }
                    }
                }
            },
        )
    }
}

/// Extension trait: `dead_letters.sink_dead_letter_file(file)`.
pub trait SinkDeadLetterFile<'scope> {
    /// Routes every dead letter to worker 0, which writes them all, sorted by
    /// `(partition, offset)`, when the input ends (bounded runs). Workers other than 0 pass
    /// `None`.
    ///
    /// ```
    /// use sessionflow_operators::sink::files::{LineFile, SinkDeadLetterFile};
    /// use sessionflow_operators::record::DeadLetter;
    /// use timely::dataflow::operators::{Probe, ToStream};
    /// use std::{cell::RefCell, rc::Rc};
    ///
    /// let path = std::env::temp_dir().join(format!("sf-doc-dead-{}.jsonl", std::process::id()));
    /// let d = |o: u64| DeadLetter { partition: 0, offset: o, reason: "invalid".into(), raw: "x".into() };
    /// let p = path.clone();
    /// timely::execute_directly(move |worker| {
    ///     let file = Rc::new(RefCell::new(LineFile::create(&p).unwrap()));
    ///     let f = Some(file.clone());
    ///     let probe = worker.dataflow::<u64, _, _>(move |scope| {
    ///         vec![d(5), d(1)].to_stream(scope).sink_dead_letter_file(f).probe().0
    ///     });
    ///     while !probe.done() { worker.step(); }
    ///     file.borrow_mut().finish().unwrap();
    /// });
    /// let text = std::fs::read_to_string(&path).unwrap();
    /// assert!(text.starts_with("{\"reason\":\"invalid\",\"partition\":0,\"offset\":1,"));
    /// ```
    fn sink_dead_letter_file(self, file: Option<SharedLineFile>) -> StreamVec<'scope, u64, ()>;
}

impl<'scope> SinkDeadLetterFile<'scope> for StreamVec<'scope, u64, DeadLetter> {
    fn sink_dead_letter_file(self, file: Option<SharedLineFile>) -> StreamVec<'scope, u64, ()> {
        self.unary_frontier::<CapacityContainerBuilder<Vec<()>>, _, _, _>(
            Exchange::new(|_: &DeadLetter| 0u64),
            "DeadLetterFile",
            move |_cap, _info| {
                let mut all: Vec<DeadLetter> = Vec::new();
                let mut done = false;
                move |(input, frontier), _output| {
                    input.for_each(|_time, data| all.append(data));
                    if !done && frontier.is_empty() {
                        done = true;
                        all.sort_unstable();
                        if let Some(f) = &file {
                            let mut f = f.borrow_mut();
                            let mut line = Vec::with_capacity(512);
                            for d in all.drain(..) {
                                line.clear();
                                d.write_json(&mut line);
                                f.write_line(&line);
                            }
                        }
                    }
                }
            },
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::fs::FileTypeExt;

    #[test]
    fn a_regular_file_appears_whole_only_when_finished() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        let mut f = LineFile::create(&path).unwrap();
        f.write_line(b"{}");
        assert!(!path.exists(), "renamed into place only by finish");
        f.finish().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"{}\n");
        assert!(!dir.path().join("out.jsonl.tmp").exists());
    }

    /// Handing the written bytes to the kernel's writeback as the file grows (every 1 KiB
    /// here) loses none of them and drops none of the lines still buffered.
    #[test]
    fn early_writeback_keeps_every_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        let mut f = LineFile::create(&path).unwrap();
        f.core.as_mut().unwrap().write_back_every = 1024;
        let line = |i: usize| format!("{{\"n\":{i},\"pad\":\"{}\"}}", "x".repeat(i % 300));
        let mut expected = String::new();
        for i in 0..20_000 {
            f.write_line(line(i).as_bytes());
            expected.push_str(&line(i));
            expected.push('\n');
        }
        // Advised up to what was handed over, never past what was written.
        let c = f.core.as_ref().unwrap();
        assert!(c.advised > 0 && c.advised <= c.bytes, "{} of {}", c.advised, c.bytes);
        assert!(c.bytes - c.advised < 1024 + (1 << 20), "advice kept up");
        assert_eq!(c.bytes, expected.len() as u64);
        f.finish().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), expected);
    }

    /// A run whose one output cannot be written (here `/dev/full`: every write fails, as on
    /// a full disk) puts none of its outputs in place: the files that were written keep
    /// their previous contents and leave no temporary file.
    #[test]
    fn finishing_together_replaces_no_output_when_one_cannot_be_written() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.jsonl"), dir.path().join("b.jsonl"));
        std::fs::write(&b, "old\n").unwrap();
        let fa = RefCell::new(LineFile::create(&a).unwrap());
        let fb = RefCell::new(LineFile::create(&b).unwrap());
        let full = RefCell::new(LineFile::create(Path::new("/dev/full")).unwrap());
        fa.borrow_mut().write_line(b"{}");
        fb.borrow_mut().write_line(b"{}");
        full.borrow_mut().write_line(b"{}");
        let err = finish_all([&fa, &full, &fb]).unwrap_err();
        assert!(err.contains("/dev/full"), "{err}");
        assert!(!a.exists());
        assert_eq!(std::fs::read_to_string(&b).unwrap(), "old\n");
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["b.jsonl"]);
        // When every file can be written, all of them are in place.
        let fa = RefCell::new(LineFile::create(&a).unwrap());
        let fb = RefCell::new(LineFile::create(&b).unwrap());
        fa.borrow_mut().write_line(b"1");
        fb.borrow_mut().write_line(b"2");
        finish_all([&fa, &fb]).unwrap();
        assert_eq!(std::fs::read_to_string(&a).unwrap(), "1\n");
        assert_eq!(std::fs::read_to_string(&b).unwrap(), "2\n");
    }

    /// Lines handed to the writer thread in batches are written in order, before any line
    /// written directly after them, and the file is whole once finished.
    #[test]
    fn batches_written_by_the_writer_thread_keep_their_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        let mut f = LineFile::create(&path).unwrap();
        f.core.as_mut().unwrap().write_back_every = 4096;
        let mut expected = String::new();
        for b in 0..50 {
            let batch: Vec<String> = (0..200).map(|i| format!("{{\"b\":{b},\"i\":{i}}}")).collect();
            batch.iter().for_each(|l| {
                expected.push_str(l);
                expected.push('\n');
            });
            f.write_lines(batch);
            assert!(f.writer.is_some(), "written by the thread");
        }
        f.write_line(b"last");
        expected.push_str("last\n");
        assert!(f.writer.is_none(), "a direct write waits for the thread");
        assert_eq!(f.core.as_ref().unwrap().lines, 50 * 200 + 1);
        assert!(!path.exists());
        f.finish().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), expected);
    }

    /// A write that fails on the writer thread (`/dev/full`) fails the run's outputs as one
    /// on the caller's thread does: nothing is put in place.
    #[test]
    fn a_write_failing_on_the_writer_thread_fails_finishing() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.jsonl");
        let fa = RefCell::new(LineFile::create(&a).unwrap());
        let full = RefCell::new(LineFile::create(Path::new("/dev/full")).unwrap());
        fa.borrow_mut().write_lines(vec!["{}".into()]);
        // More than the buffer holds, so that the thread itself meets the error.
        full.borrow_mut().write_lines(vec!["x".repeat(2 << 20)]);
        let err = finish_all([&fa, &full]).unwrap_err();
        assert!(err.contains("/dev/full"), "{err}");
        assert!(!a.exists());
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "no temporary file left"
        );
    }

    /// A file dropped unfinished (a failed run) waits for its writer thread and leaves the
    /// output where it was.
    #[test]
    fn a_file_dropped_unfinished_stops_its_writer_thread() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        let mut f = LineFile::create(&path).unwrap();
        f.write_lines(vec!["{}".into(); 1000]);
        f.abandon();
        assert!(f.writer.is_none());
        drop(f);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    /// `--output /dev/null` (or a pipe) must not replace the device with a regular file.
    #[test]
    fn a_pipe_is_written_directly_and_stays_a_pipe() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo").arg(&path).status().unwrap();
        assert!(made.success());
        let reader = {
            let path = path.clone();
            std::thread::spawn(move || std::fs::read(path).unwrap())
        };
        let mut f = LineFile::create(&path).unwrap();
        f.write_line(b"a");
        f.write_line(b"b");
        f.finish().unwrap();
        drop(f);
        // Checked before joining the reader: had the pipe been replaced, its reader would
        // still wait for a writer.
        assert!(std::fs::metadata(&path).unwrap().file_type().is_fifo());
        assert!(!dir.path().join("fifo.tmp").exists());
        assert_eq!(reader.join().unwrap(), b"a\nb\n");
    }
}
