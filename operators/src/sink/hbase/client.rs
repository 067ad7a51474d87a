//! A blocking HBase Thrift1 connection (the `hbase-thrift` crate over a buffered binary
//! transport, like HBase's own `ThriftServer` without `-f`/`-c`), with timeouts and errors as
//! data.
//!
//! Every call either succeeds or returns an [`HbaseError`] that says whether retrying can help
//! ([`HbaseError::is_retryable`]) and whether the connection must be dropped first
//! ([`HbaseError::is_broken`]): HBase's Thrift server closes connections idle for 60 s, and
//! a read that timed out leaves the stream out of step, so both reconnect.

use std::collections::BTreeMap;
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use hbase_thrift::hbase::{
    AlreadyExists, BatchMutation, ColumnDescriptor, HbaseSyncClient, IOError, IllegalArgument, THbaseSyncClient,
    TRowResult, TScan,
};
use thrift::protocol::{TBinaryInputProtocol, TBinaryOutputProtocol};
use thrift::transport::{
    ReadHalf, TBufferedReadTransport, TBufferedWriteTransport, TIoChannel, TTcpChannel, WriteHalf,
};

/// Errors talking to HBase (all carry enough context to act on without a stack trace).
#[derive(Debug, thiserror::Error)]
pub enum HbaseError {
    /// The address does not parse or resolve.
    #[error("cannot resolve HBase Thrift address {addr:?}: {reason}")]
    Resolve {
        /// `host:port` as given.
        addr: String,
        /// Why.
        reason: String,
    },
    /// No TCP connection could be made.
    #[error("cannot connect to the HBase Thrift server at {addr}: {reason} (is HBase running? `scripts/services.sh up hbase`)")]
    Connect {
        /// `host:port`.
        addr: String,
        /// The socket error.
        reason: String,
    },
    /// The connection broke (reset, closed, timed out, or a garbled reply): reconnect.
    #[error("HBase Thrift connection to {addr} failed during {op}: {reason}")]
    Transport {
        /// `host:port`.
        addr: String,
        /// The Thrift call.
        op: &'static str,
        /// What the transport or protocol reported.
        reason: String,
    },
    /// HBase reported an I/O error (region moving or offline, server stopping ...).
    #[error("HBase error during {op}: {message}")]
    Server {
        /// The Thrift call.
        op: &'static str,
        /// First line of HBase's message.
        message: String,
    },
    /// HBase rejected the request itself (retrying cannot help).
    #[error("HBase rejected {op}: {message}")]
    IllegalArgument {
        /// The Thrift call.
        op: &'static str,
        /// First line of HBase's message.
        message: String,
    },
    /// The table exists but lacks the column family the SessionDB needs.
    #[error("HBase table {table:?} exists but has no column family {family:?} (it has: {found}); use another --table, or --hbase-family / --hbase-query-family")]
    MissingFamily {
        /// Table name.
        table: String,
        /// The family that is needed.
        family: String,
        /// The families the table has.
        found: String,
    },
    /// The table does not exist (for readers, which never create it).
    #[error("HBase table {table:?} does not exist")]
    NoTable {
        /// Table name.
        table: String,
    },
    /// A stored row does not decode.
    #[error("bad SessionDB row {row}: {reason}")]
    BadRow {
        /// The row key, escaped for display.
        row: String,
        /// What is wrong with it.
        reason: String,
    },
    /// SessionDB no longer holds what an exact restore needs.
    #[error("{0}")]
    Restore(String),
}

impl HbaseError {
    /// Whether the same request may succeed later (after a reconnect when [`HbaseError::is_broken`]).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            HbaseError::Connect { .. } | HbaseError::Transport { .. } | HbaseError::Server { .. }
        )
    }

    /// Whether the connection must be dropped before retrying.
    pub fn is_broken(&self) -> bool {
        matches!(self, HbaseError::Connect { .. } | HbaseError::Transport { .. })
    }
}

/// First line of a (Java stack trace) message, at most 400 characters.
fn first_line(text: &str) -> String {
    let line = text.lines().next().unwrap_or("").trim();
    let mut out: String = line.chars().take(400).collect();
    if out.len() < line.len() {
        out.push_str("...");
    }
    out
}

/// Timeouts of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP connect timeout.
    pub connect: Duration,
    /// Read and write timeout of every call.
    pub io: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(5),
            io: Duration::from_secs(60),
        }
    }
}

type Client = HbaseSyncClient<
    TBinaryInputProtocol<TBufferedReadTransport<ReadHalf<TTcpChannel>>>,
    TBinaryOutputProtocol<TBufferedWriteTransport<WriteHalf<TTcpChannel>>>,
>;

/// One open Thrift1 connection.
pub struct HbaseClient {
    client: Client,
    addr: String,
    last_used: Instant,
}

/// What a table keeps in one column family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Family {
    /// Versions kept per cell.
    pub max_versions: i32,
    /// Compression algorithm, as HBase names it (`NONE`, `GZ` ...).
    pub compression: String,
}

/// Which column families a table has, by name.
pub type Families = BTreeMap<String, Family>;

/// The fewest max versions among `families` of `table`, whose families are `found`; an error
/// naming the first one missing.
pub fn family_versions(table: &str, found: &Families, families: &[&str]) -> Result<i32, HbaseError> {
    families
        .iter()
        .try_fold(i32::MAX, |versions, family| match found.get(*family) {
            Some(f) => Ok(versions.min(f.max_versions)),
            None => Err(HbaseError::MissingFamily {
                table: table.to_string(),
                family: family.to_string(),
                found: found.keys().cloned().collect::<Vec<_>>().join(", "),
            }),
        })
}

impl HbaseClient {
    /// Opens a connection to `addr` (`host:port`).
    pub fn connect(addr: &str, timeouts: Timeouts) -> Result<HbaseClient, HbaseError> {
        let resolved: Vec<_> = addr
            .to_socket_addrs()
            .map_err(|e| HbaseError::Resolve {
                addr: addr.to_string(),
                reason: e.to_string(),
            })?
            .collect();
        let mut last = String::from("no address");
        for sa in resolved {
            match TcpStream::connect_timeout(&sa, timeouts.connect) {
                Ok(stream) => {
                    let setup = stream
                        .set_read_timeout(Some(timeouts.io))
                        .and_then(|_| stream.set_write_timeout(Some(timeouts.io)))
                        .and_then(|_| stream.set_nodelay(true));
                    if let Err(e) = setup {
                        last = e.to_string();
                        continue;
                    }
                    let channel = TTcpChannel::with_stream(stream);
                    let (r, w) = channel.split().map_err(|e| HbaseError::Connect {
                        addr: addr.to_string(),
                        reason: e.to_string(),
                    })?;
                    let ip = TBinaryInputProtocol::new(TBufferedReadTransport::with_capacity(1 << 16, r), true);
                    let op = TBinaryOutputProtocol::new(TBufferedWriteTransport::with_capacity(1 << 16, w), true);
                    return Ok(HbaseClient {
                        client: HbaseSyncClient::new(ip, op),
                        addr: addr.to_string(),
                        last_used: Instant::now(),
                    });
                }
                Err(e) => last = e.to_string(),
            }
        }
        Err(HbaseError::Connect {
            addr: addr.to_string(),
            reason: last,
        })
    }

    /// The server address.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Time since the last call (the server drops connections idle for 60 s).
    pub fn idle(&self) -> Duration {
        self.last_used.elapsed()
    }

    fn map(&self, op: &'static str, e: thrift::Error) -> HbaseError {
        match e {
            thrift::Error::Transport(t) => HbaseError::Transport {
                addr: self.addr.clone(),
                op,
                reason: t.to_string(),
            },
            thrift::Error::Protocol(p) => HbaseError::Transport {
                addr: self.addr.clone(),
                op,
                reason: p.to_string(),
            },
            thrift::Error::Application(a) => HbaseError::Transport {
                addr: self.addr.clone(),
                op,
                reason: a.to_string(),
            },
            thrift::Error::User(u) => {
                if let Some(io) = u.downcast_ref::<IOError>() {
                    let message = first_line(io.message.as_deref().unwrap_or("IOError"));
                    // The master's sanity check refusing a table (a codec the region servers
                    // lack, a bad setting) is final; other I/O errors are worth a retry.
                    if op == "createTable" && message.contains("DoNotRetryIOException") {
                        HbaseError::IllegalArgument { op, message }
                    } else {
                        HbaseError::Server { op, message }
                    }
                } else if let Some(ia) = u.downcast_ref::<IllegalArgument>() {
                    HbaseError::IllegalArgument {
                        op,
                        message: first_line(ia.message.as_deref().unwrap_or("IllegalArgument")),
                    }
                } else if let Some(ae) = u.downcast_ref::<AlreadyExists>() {
                    HbaseError::Server {
                        op,
                        message: first_line(ae.message.as_deref().unwrap_or("AlreadyExists")),
                    }
                } else {
                    HbaseError::Server {
                        op,
                        message: first_line(&u.to_string()),
                    }
                }
            }
        }
    }

    fn call<T>(&mut self, op: &'static str, f: impl FnOnce(&mut Client) -> thrift::Result<T>) -> Result<T, HbaseError> {
        let r = f(&mut self.client);
        self.last_used = Instant::now();
        r.map_err(|e| self.map(op, e))
    }

    /// Table names.
    pub fn table_names(&mut self) -> Result<Vec<Vec<u8>>, HbaseError> {
        self.call("getTableNames", |c| c.get_table_names())
    }

    /// The column families of `table` (with their max versions and compression), or `None`
    /// when it does not exist.
    pub fn families(&mut self, table: &str) -> Result<Option<Families>, HbaseError> {
        if !self.table_names()?.iter().any(|t| t.as_slice() == table.as_bytes()) {
            return Ok(None);
        }
        let cols = self.call("getColumnDescriptors", |c| {
            c.get_column_descriptors(table.as_bytes().to_vec())
        })?;
        let mut out = Families::new();
        for (name, d) in cols {
            // Thrift1 names families `name:`.
            let name = String::from_utf8_lossy(&name).trim_end_matches(':').to_string();
            let family = Family {
                max_versions: d.max_versions.unwrap_or(0),
                compression: d.compression.unwrap_or_default(),
            };
            out.insert(name, family);
        }
        Ok(Some(out))
    }

    /// Makes sure `table` exists with every column family of `families`: creates it (keeping
    /// `max_versions` versions per cell, compressed with the HBase algorithm `compression`:
    /// `NONE`, `GZ` ...) when missing; errors when it exists without one of
    /// them, naming it. Returns the table's families: as found, or as created.
    pub fn ensure_table(
        &mut self,
        table: &str,
        families: &[&str],
        max_versions: i32,
        compression: &str,
    ) -> Result<Families, HbaseError> {
        if let Some(found) = self.families(table)? {
            family_versions(table, &found, families)?;
            return Ok(found);
        }
        let desc = |family: &str| ColumnDescriptor {
            name: Some(format!("{family}:").into_bytes()),
            max_versions: Some(max_versions.max(1)),
            compression: Some(compression.into()),
            in_memory: Some(false),
            bloom_filter_type: Some("NONE".into()),
            bloom_filter_vector_size: Some(0),
            bloom_filter_nb_hashes: Some(0),
            block_cache_enabled: Some(true),
            time_to_live: Some(-1),
        };
        let descs = families.iter().map(|f| desc(f)).collect::<Vec<_>>();
        match self.call("createTable", |c| c.create_table(table.as_bytes().to_vec(), descs)) {
            Ok(()) => Ok(families
                .iter()
                .map(|f| {
                    let family = Family {
                        max_versions: max_versions.max(1),
                        compression: compression.to_string(),
                    };
                    (f.to_string(), family)
                })
                .collect()),
            // Another worker or process created it meanwhile: check it.
            Err(HbaseError::Server { .. } | HbaseError::IllegalArgument { .. }) if self.families(table)?.is_some() => {
                self.ensure_table(table, families, max_versions, compression)
            }
            Err(e) => Err(e),
        }
    }

    /// Deletes a table (disabling it first); no error when it does not exist.
    pub fn drop_table(&mut self, table: &str) -> Result<(), HbaseError> {
        if !self.table_names()?.iter().any(|t| t.as_slice() == table.as_bytes()) {
            return Ok(());
        }
        let name = table.as_bytes().to_vec();
        if self.call("isTableEnabled", |c| c.is_table_enabled(name.clone()))? {
            self.call("disableTable", |c| c.disable_table(name.clone()))?;
        }
        self.call("deleteTable", |c| c.delete_table(name))
    }

    /// Disables then enables a table: closing its regions flushes their memstores to HFiles
    /// (Thrift1 has no flush call).
    pub fn flush_by_reopening(&mut self, table: &str) -> Result<(), HbaseError> {
        let name = table.as_bytes().to_vec();
        self.call("disableTable", |c| c.disable_table(name.clone()))?;
        self.call("enableTable", |c| c.enable_table(name))
    }

    /// Asks HBase to compact a table (asynchronous on the server). Despite its name, HBase
    /// 2.x's Thrift1 handler runs `Admin.compact`: a *minor* compaction, which skips a store
    /// of fewer than three files and keeps delete markers. `scripts/services.sh compact` runs
    /// a real major compaction through the Java Admin API.
    pub fn major_compact(&mut self, table: &str) -> Result<(), HbaseError> {
        self.call("majorCompact", |c| c.major_compact(table.as_bytes().to_vec()))
    }

    /// Writes `rows` with every cell at `timestamp` (ms); deletes in them remove the versions
    /// at or before `timestamp`.
    pub fn mutate_rows_ts(&mut self, table: &str, rows: Vec<BatchMutation>, timestamp: i64) -> Result<(), HbaseError> {
        self.call("mutateRowsTs", |c| {
            c.mutate_rows_ts(table.as_bytes().to_vec(), rows, timestamp, BTreeMap::new())
        })
    }

    /// The latest version (below `before` ms when given) of `columns` of one row.
    pub fn get_row(
        &mut self,
        table: &str,
        row: &[u8],
        columns: &[Vec<u8>],
        before: Option<i64>,
    ) -> Result<Option<TRowResult>, HbaseError> {
        let t = table.as_bytes().to_vec();
        let rows = match before {
            Some(ts) => self.call("getRowWithColumnsTs", |c| {
                c.get_row_with_columns_ts(t, row.to_vec(), columns.to_vec(), ts, BTreeMap::new())
            })?,
            None => self.call("getRowWithColumns", |c| {
                c.get_row_with_columns(t, row.to_vec(), columns.to_vec(), BTreeMap::new())
            })?,
        };
        Ok(rows
            .into_iter()
            .find(|r| r.columns.as_ref().is_some_and(|c| !c.is_empty())))
    }

    /// Every version (newest first, at most `versions`) of one cell with a timestamp below `before`.
    pub fn cell_versions(
        &mut self,
        table: &str,
        row: &[u8],
        column: &[u8],
        before: i64,
        versions: i32,
    ) -> Result<Vec<(i64, Vec<u8>)>, HbaseError> {
        let cells = self.call("getVerTs", |c| {
            c.get_ver_ts(
                table.as_bytes().to_vec(),
                row.to_vec(),
                column.to_vec(),
                before,
                versions,
                BTreeMap::new(),
            )
        })?;
        Ok(cells
            .into_iter()
            .map(|c| (c.timestamp.unwrap_or(0), c.value.unwrap_or_default()))
            .collect())
    }

    /// Runs a scan to the end, `batch` rows per round trip, handing each row to `each`
    /// (which returns `false` to stop early). The scanner is closed in every case.
    pub fn scan(
        &mut self,
        table: &str,
        scan: TScan,
        batch: i32,
        mut each: impl FnMut(TRowResult) -> bool,
    ) -> Result<(), HbaseError> {
        let id = self.call("scannerOpenWithScan", |c| {
            c.scanner_open_with_scan(table.as_bytes().to_vec(), scan, BTreeMap::new())
        })?;
        let result = loop {
            match self.call("scannerGetList", |c| c.scanner_get_list(id, batch.max(1))) {
                Ok(rows) if rows.is_empty() => break Ok(()),
                Ok(rows) => {
                    // `scannerGetList` returns fewer rows than asked only at the end of the
                    // scan (the server's `ResultScanner.next(n)` fills up to `n`): no need for
                    // another round trip to learn that.
                    let last = rows.len() < batch.max(1) as usize;
                    let mut go = true;
                    for r in rows {
                        if go && !each(r) {
                            go = false;
                        }
                    }
                    if !go || last {
                        break Ok(());
                    }
                }
                Err(e) => break Err(e),
            }
        };
        let closed = self.call("scannerClose", |c| c.scanner_close(id));
        match (result, closed) {
            (Err(e), _) => Err(e),
            // A broken connection while closing is harmless: the server drops the scanner too.
            (Ok(()), Err(e)) if !e.is_broken() => Err(e),
            _ => Ok(()),
        }
    }
}

/// Retry policy: exponential backoff between `initial` and `max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// First wait.
    pub initial: Duration,
    /// Longest wait.
    pub max: Duration,
}

impl Backoff {
    /// The wait before retry number `attempt` (1-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        let shift = attempt.saturating_sub(1).min(20);
        self.initial.saturating_mul(1u32 << shift).min(self.max)
    }
}

/// Connects, retrying retryable failures with backoff until `deadline` has passed, logging each
/// retry on stderr with `who` as prefix. Non-retryable errors return at once.
pub fn connect_with_retry(
    addr: &str,
    timeouts: Timeouts,
    backoff: Backoff,
    deadline: Duration,
    who: &str,
) -> Result<HbaseClient, HbaseError> {
    retry(backoff, deadline, who, "connect", || {
        HbaseClient::connect(addr, timeouts).and_then(|mut c| c.table_names().map(|_| c))
    })
}

/// Runs `f` until it succeeds, a non-retryable error occurs, or `deadline` has passed
/// (then the last error is returned), logging each retry on stderr.
pub fn retry<T>(
    backoff: Backoff,
    deadline: Duration,
    who: &str,
    what: &str,
    mut f: impl FnMut() -> Result<T, HbaseError>,
) -> Result<T, HbaseError> {
    let start = Instant::now();
    let mut attempt = 0u32;
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if !e.is_retryable() => return Err(e),
            Err(e) => {
                attempt += 1;
                let wait = backoff.delay(attempt);
                if start.elapsed() + wait > deadline {
                    return Err(e);
                }
                eprintln!(
                    "{who}: {what} failed (attempt {attempt}): {e}; retrying in {} ms",
                    wait.as_millis()
                );
                std::thread::sleep(wait);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(2),
        };
        assert_eq!(b.delay(1), Duration::from_millis(100));
        assert_eq!(b.delay(2), Duration::from_millis(200));
        assert_eq!(b.delay(5), Duration::from_millis(1600));
        assert_eq!(b.delay(6), Duration::from_secs(2));
        assert_eq!(b.delay(1000), Duration::from_secs(2));
    }

    #[test]
    fn unreachable_server_is_a_clear_retryable_error() {
        // Port 1 on loopback: nothing listens there.
        let t = Timeouts {
            connect: Duration::from_millis(200),
            io: Duration::from_millis(200),
        };
        let e = HbaseClient::connect("127.0.0.1:1", t)
            .err()
            .map(|e| (e.is_retryable(), e.to_string()));
        let (retryable, text) = e.unwrap_or_default();
        assert!(retryable);
        assert!(text.contains("127.0.0.1:1"), "{text}");
        let bad = HbaseClient::connect("no-port-here", t).err().map(|e| e.is_retryable());
        assert_eq!(bad, Some(false));
    }

    #[test]
    fn stack_traces_are_cut_to_their_first_line() {
        assert_eq!(
            first_line("java.io.IOException: boom\n\tat x.y(Z.java:1)"),
            "java.io.IOException: boom"
        );
    }
}
