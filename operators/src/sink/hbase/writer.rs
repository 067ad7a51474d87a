//! The writer thread of one worker's HBase sink: takes write jobs from a channel, runs each as
//! one `mutateRowsTs` call, retries failures with exponential backoff (reconnecting when the
//! connection broke or sat idle), and acknowledges each job through a channel and a
//! `SyncActivator`, so the worker never blocks on HBase.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use hbase_thrift::hbase::BatchMutation;
use timely::scheduling::SyncActivator;

use super::client::{Backoff, HbaseClient, HbaseError, Timeouts};

/// One `mutateRowsTs` call.
pub(crate) struct WriteJob {
    /// Identifies the job in its acknowledgement.
    pub id: u64,
    /// The timestamp of every cell (and the bound of every delete).
    pub ts: i64,
    /// The rows.
    pub rows: Vec<BatchMutation>,
    /// For logs: what the job is (`window 123`, `history of rows closed in window 90`).
    pub what: String,
}

/// The outcome of a job.
pub(crate) enum Ack {
    /// HBase acknowledged every row of the job.
    Done(u64),
    /// A non-retryable error: the job was given up.
    Failed(u64),
}

/// Live figures of one sink (all workers of a process may share one).
#[derive(Debug, Default)]
pub struct SinkStats {
    /// Rows acknowledged by HBase.
    pub rows: AtomicU64,
    /// `mutateRowsTs` calls acknowledged.
    pub calls: AtomicU64,
    /// Failed attempts that were retried.
    pub retries: AtomicU64,
    /// Jobs queued or in flight.
    pub in_flight: AtomicU64,
    /// Bytes of cell values queued or in flight (a rough backlog measure).
    pub in_flight_bytes: AtomicU64,
    /// The first non-retryable error (the sink then stops acknowledging: the job must stop).
    pub fatal: Mutex<Option<String>>,
}

impl SinkStats {
    /// The first non-retryable error, if any.
    pub fn fatal(&self) -> Option<String> {
        self.fatal.lock().ok().and_then(|g| g.clone())
    }
}

/// Settings of a writer thread.
#[derive(Clone, Debug)]
pub(crate) struct WriterSettings {
    pub addr: String,
    pub table: String,
    pub timeouts: Timeouts,
    pub backoff: Backoff,
    /// Reconnect before a call when the connection sat idle this long (the server drops
    /// connections idle for 60 s).
    pub idle_reconnect: Duration,
    /// Prefix of log lines.
    pub who: String,
}

/// Sets the flag when dropped (the operator holds it): the thread then stops retrying.
pub(crate) struct StopOnDrop(pub Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

pub(crate) fn bytes_of(rows: &[BatchMutation]) -> u64 {
    rows.iter()
        .map(|r| {
            r.row.as_ref().map_or(0, Vec::len)
                + r.mutations
                    .as_ref()
                    .map_or(0, |m| m.iter().map(|m| m.value.as_ref().map_or(0, Vec::len) + 16).sum())
        })
        .sum::<usize>() as u64
}

/// Starts the thread. It ends when `jobs` is closed (the operator was dropped) or `stop` is set.
pub(crate) fn spawn(
    settings: WriterSettings,
    jobs: Receiver<WriteJob>,
    acks: Sender<Ack>,
    activator: SyncActivator,
    stats: Arc<SinkStats>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name(settings.who.clone()).spawn(move || {
        let mut client: Option<HbaseClient> = None;
        while let Ok(job) = jobs.recv() {
            let n = job.rows.len() as u64;
            let bytes = bytes_of(&job.rows);
            let outcome = write(&settings, &mut client, &job, &stats, &stop);
            stats.in_flight.fetch_sub(1, Ordering::Relaxed);
            stats.in_flight_bytes.fetch_sub(bytes, Ordering::Relaxed);
            let ack = match outcome {
                Ok(()) => {
                    stats.rows.fetch_add(n, Ordering::Relaxed);
                    stats.calls.fetch_add(1, Ordering::Relaxed);
                    Ack::Done(job.id)
                }
                Err(None) => return, // stopping
                Err(Some(e)) => {
                    let msg = format!("{}: giving up on {}: {e}", settings.who, job.what);
                    eprintln!("{msg}");
                    if let Ok(mut f) = stats.fatal.lock() {
                        f.get_or_insert(msg);
                    }
                    Ack::Failed(job.id)
                }
            };
            if acks.send(ack).is_err() {
                return;
            }
            let _ = activator.activate();
        }
    })
}

/// Runs one job to success, a non-retryable error (`Err(Some)`) or a stop (`Err(None)`).
fn write(
    s: &WriterSettings,
    client: &mut Option<HbaseClient>,
    job: &WriteJob,
    stats: &SinkStats,
    stop: &AtomicBool,
) -> Result<(), Option<HbaseError>> {
    let mut attempt = 0u32;
    loop {
        if stop.load(Ordering::SeqCst) {
            return Err(None);
        }
        if client.as_ref().is_some_and(|c| c.idle() >= s.idle_reconnect) {
            *client = None;
        }
        let result = match client.as_mut() {
            Some(c) => c.mutate_rows_ts(&s.table, job.rows.clone(), job.ts),
            None => match HbaseClient::connect(&s.addr, s.timeouts) {
                Ok(mut c) => {
                    let r = c.mutate_rows_ts(&s.table, job.rows.clone(), job.ts);
                    *client = Some(c);
                    r
                }
                Err(e) => Err(e),
            },
        };
        match result {
            Ok(()) => {
                if attempt > 0 {
                    eprintln!("{}: {} written after {attempt} retries", s.who, job.what);
                }
                return Ok(());
            }
            Err(e) if e.is_retryable() => {
                if e.is_broken() {
                    *client = None;
                }
                attempt += 1;
                stats.retries.fetch_add(1, Ordering::Relaxed);
                let wait = s.backoff.delay(attempt);
                eprintln!(
                    "{}: writing {} failed (attempt {attempt}): {e}; retrying in {} ms",
                    s.who,
                    job.what,
                    wait.as_millis()
                );
                // Sleep in slices so a stop is noticed quickly.
                let mut left = wait;
                while !left.is_zero() && !stop.load(Ordering::SeqCst) {
                    let step = left.min(Duration::from_millis(100));
                    std::thread::sleep(step);
                    left -= step;
                }
            }
            Err(e) => return Err(Some(e)),
        }
    }
}
