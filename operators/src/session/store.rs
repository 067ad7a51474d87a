//! The keyed session store of one worker: buffers events per window and processes a window
//! exactly as `shared/spec/sessions.md` says (pure code, no timely).
//!
//! Work is proportional to change: a window touches only its own events, the sessions due to
//! close in it (an index by closing window) and the closed-set entries expiring in it. Nothing
//! ever scans all open sessions.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::rc::Rc;

use hashbrown::hash_map::EntryRef;
use hashbrown::HashMap;
use serde::{Deserialize, Serialize};

use super::operator::route_hash;
use super::state::{Session, SessionConfig, Snapshot};
use crate::prefetch::prefetch;
use crate::record::{DeadLetter, Sourced, SESSION_CLOSED};

/// What processing a window produces.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum SessionOutput {
    /// A session snapshot at the window.
    Snapshot(Snapshot),
    /// A `session_closed` dead letter.
    DeadLetter(DeadLetter),
}

/// Counters of the session store (the spec's counters, but for the source's).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionCounters {
    /// Events accepted into a session (net of merge duplicates).
    pub accepted: u64,
    /// Events dropped as duplicates of an accepted event.
    pub duplicates: u64,
    /// Events dead-lettered as `session_closed`.
    pub late: u64,
    /// Sessions opened.
    pub sessions_opened: u64,
    /// Sessions closed (including merged-away gap sessions).
    pub sessions_closed: u64,
    /// Snapshots emitted.
    pub snapshots: u64,
}

impl SessionCounters {
    /// Adds another worker's counters.
    pub fn add(&mut self, o: &SessionCounters) {
        self.accepted += o.accepted;
        self.duplicates += o.duplicates;
        self.late += o.late;
        self.sessions_opened += o.sessions_opened;
        self.sessions_closed += o.sessions_closed;
        self.snapshots += o.snapshots;
    }
}

/// Gap-based sessions of one `(project_id, visitor_id)` pair.
#[derive(Debug, Default)]
struct GapGroup {
    open: Vec<Session>,
    /// Recently closed sessions: `(start, end, closed through window)`.
    closed: Vec<(i64, i64, u64)>,
}

type Pair = (u64, Box<str>);

/// A borrowed [`Pair`]: looks a gap group up without allocating its key. It hashes as the
/// `Pair` it stands for (the `u64`, then the string as `str` hashes).
#[derive(Hash)]
struct PairRef<'a>(u64, &'a str);

impl hashbrown::Equivalent<Pair> for PairRef<'_> {
    fn equivalent(&self, key: &Pair) -> bool {
        self.0 == key.0 && self.1 == &*key.1
    }
}

impl From<&PairRef<'_>> for Pair {
    fn from(r: &PairRef<'_>) -> Pair {
        (r.0, r.1.into())
    }
}

/// A reference to an open session, for the close index and the touched list.
#[derive(Clone, Debug)]
enum SessionRef {
    /// Shares the session map's key: an index entry costs a pointer, not a copy of the id.
    Id(Rc<str>),
    Gap(u64, Box<str>, Box<str>),
}

/// A reference to a closed-set entry, for the expiry index.
#[derive(Clone, Debug)]
enum ClosedRef {
    Id(Rc<str>),
    Gap(u64, Box<str>),
}

/// All session state of one worker.
#[derive(Debug)]
pub struct SessionStore {
    cfg: SessionConfig,
    /// Events per window, as the batches they arrived in (never moved one by one).
    pending: BTreeMap<u64, Vec<Vec<Sourced>>>,
    /// Events in `pending`.
    pending_count: usize,
    /// Open sessions by id. Boxed: the table holds 24-byte entries, not ~450-byte sessions,
    /// so it stays small and dense, and growing it moves pointers, not sessions.
    sessions: HashMap<Rc<str>, Box<Session>>,
    gaps: HashMap<Pair, GapGroup>,
    closed: HashMap<Rc<str>, u64>,
    close_index: BTreeMap<u64, Vec<SessionRef>>,
    expire_index: BTreeMap<u64, Vec<ClosedRef>>,
    counters: SessionCounters,
    open: usize,
    /// [`SessionStore::process`]'s working buffers (the window's event order and its key
    /// groups), kept from window to window: a busy window's are megabytes, which allocated
    /// afresh each window would be fresh pages to fault in (and copies as they grow).
    order: Vec<OrderEntry>,
    groups: Vec<(i64, u64, usize, usize)>,
    /// Working space of the order's sort (see `sort_by_hash`): a second order and the
    /// buckets' counts.
    spare: Vec<OrderEntry>,
    counts: Vec<u32>,
    /// The window [`SessionStore::process_some`] is in the middle of, if any.
    current: Option<InProgress>,
}

/// Where [`SessionStore::process_some`] stopped in its window.
#[derive(Debug)]
struct InProgress {
    m: u64,
    /// The window's events (`order` indexes them).
    batches: Vec<Vec<Sourced>>,
    /// The next key group of `groups` to apply.
    next_group: usize,
    /// The sessions due to close at `m`, once every group is applied.
    closing: Option<Vec<SessionRef>>,
    /// The next of `closing` to close.
    next_close: usize,
}

/// A working buffer emptied for the next window, and shrunk when this window used under a
/// quarter of it: one burst does not pin its peak for the rest of the run.
fn keep<T>(mut buf: Vec<T>) -> Vec<T> {
    let used = buf.len();
    buf.clear();
    if buf.capacity() > 4 * used.max(1024) {
        buf.shrink_to(2 * used);
    }
    buf
}

/// How many key groups (or closing sessions) apart the steps of the window's prefetching are
/// ([`SessionStore::prefetch_groups`]): far enough for a step's loads to arrive before the
/// next step reads them, near enough that they are still cached when the group is applied.
/// 2, 4 and 8 measured the same (docs/performance.md, "Engine").
const PREFETCH_STEP: usize = 4;

/// A window's event order: `(key hash, timestamp, batch, index)`.
type OrderEntry = (u64, i64, u32, u32);

/// Sorts `order` by `cmp`, which must order by the key hash first: one counting pass on the
/// hash's top bits (the hash is mixed, so each bucket holds about one entry), then each bucket
/// by `cmp`. The same order as `order.sort_unstable_by(cmp)` for a total order, without its
/// ~13 rounds of comparisons and moves per entry. `spare` and `counts` are working space.
fn sort_by_hash(
    order: &mut Vec<OrderEntry>,
    spare: &mut Vec<OrderEntry>,
    counts: &mut Vec<u32>,
    cmp: impl Fn(&OrderEntry, &OrderEntry) -> Ordering,
) {
    let n = order.len();
    if n < 1024 {
        order.sort_unstable_by(cmp);
        return;
    }
    // About one bucket per entry, at most 64K buckets (256 KiB of counts).
    let bits = (usize::BITS - n.leading_zeros()).clamp(10, 16);
    let bucket = |e: &OrderEntry| (e.0 >> (64 - bits)) as usize;
    counts.clear();
    counts.resize((1 << bits) + 1, 0);
    for e in order.iter() {
        counts[bucket(e) + 1] += 1;
    }
    for b in 1..counts.len() {
        counts[b] += counts[b - 1];
    }
    // `counts[b]` is now where bucket `b` starts; it advances as the bucket fills.
    spare.clear();
    spare.resize(n, (0, 0, 0, 0));
    for e in order.iter() {
        let at = &mut counts[bucket(e)];
        spare[*at as usize] = *e;
        *at += 1;
    }
    // Bucket `b` now ends at `counts[b]` (and starts where bucket `b - 1` ends).
    let mut start = 0;
    for &end in &counts[..counts.len() - 1] {
        let end = end as usize;
        if end - start > 1 {
            spare[start..end].sort_unstable_by(&cmp);
        }
        start = end;
    }
    std::mem::swap(order, spare);
}

impl SessionStore {
    /// An empty store.
    pub fn new(cfg: SessionConfig) -> Self {
        SessionStore {
            cfg,
            pending: BTreeMap::new(),
            pending_count: 0,
            sessions: HashMap::new(),
            gaps: HashMap::new(),
            closed: HashMap::new(),
            close_index: BTreeMap::new(),
            expire_index: BTreeMap::new(),
            counters: SessionCounters::default(),
            open: 0,
            order: Vec::new(),
            groups: Vec::new(),
            spare: Vec::new(),
            counts: Vec::new(),
            current: None,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &SessionConfig {
        &self.cfg
    }

    /// Buffers an event assigned to `window` until the window is processed.
    pub fn insert(&mut self, window: u64, rec: Sourced) {
        self.insert_batch(window, &mut vec![rec]);
    }

    /// Buffers a batch of events assigned to `window`, taking the vector as it is (the events
    /// are not moved one by one; `batch` is left empty).
    pub fn insert_batch(&mut self, window: u64, batch: &mut Vec<Sourced>) {
        if batch.is_empty() {
            return;
        }
        self.pending_count += batch.len();
        let batches = self.pending.entry(window).or_default();
        match batches.last_mut() {
            // Tiny batches (one event at a time) join the last one rather than pile up.
            Some(last) if batch.len() < 16 && last.len() < 4096 => last.append(batch),
            _ => batches.push(std::mem::take(batch)),
        }
    }

    /// The smallest window with work (events to apply or sessions due to close).
    pub fn next_window(&self) -> Option<u64> {
        if let Some(cur) = &self.current {
            return Some(cur.m);
        }
        let a = self.pending.keys().next().copied();
        let b = self.close_index.keys().next().copied();
        match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Counters so far.
    pub fn counters(&self) -> &SessionCounters {
        &self.counters
    }

    /// Open sessions right now.
    pub fn open_sessions(&self) -> usize {
        self.open
    }

    /// Approximate heap bytes of the open sessions and indexes (a full scan: diagnostics only).
    pub fn heap_bytes(&self) -> (usize, usize) {
        let sessions: usize = self
            .sessions
            .iter()
            .map(|(k, s)| k.len() + std::mem::size_of::<Session>() + s.heap_bytes())
            .sum();
        let index: usize = self
            .close_index
            .values()
            .map(|v| v.capacity() * std::mem::size_of::<SessionRef>())
            .sum();
        (sessions, index)
    }

    /// Events buffered for windows not processed yet.
    pub fn pending_events(&self) -> usize {
        self.pending_count
    }

    /// Processes window `m`: applies its events in order, emits the snapshots of the sessions
    /// it changed, and closes the sessions due. The caller guarantees that every event of `m`
    /// was inserted and that windows are processed in increasing order.
    ///
    /// The spec orders events per session key only, so the window's events are taken key by
    /// key (grouped by the key's hash, each key's in `(timestamp, event_id, partition,
    /// offset)` order, keys by their first event's time), and a key's snapshots are emitted
    /// as soon as its events are applied: each session is fetched from memory once per
    /// window, not once per event and again for its snapshot. Keys are independent, so the
    /// output is the same in any key order.
    pub fn process(&mut self, m: u64, out: &mut impl FnMut(SessionOutput)) {
        while !self.process_some(m, usize::MAX, out) {}
    }

    /// [`SessionStore::process`] in slices: processes window `m` until about `budget` outputs
    /// were emitted (it stops between two keys, or two closing sessions), and tells whether
    /// the window is done. Until it is, call it again with the same `m` before any other
    /// window, and insert nothing for `m`; [`SessionStore::next_window`] stays at `m`.
    ///
    /// Slices bound a window's output in flight: an operator that yields between them lets
    /// the operators downstream take (and free) each slice before the next one is built, so a
    /// window that changes millions of sessions does not hold all their snapshots at once.
    /// The outputs, and their order, are those of one [`SessionStore::process`] call.
    pub fn process_some(&mut self, m: u64, budget: usize, out: &mut impl FnMut(SessionOutput)) -> bool {
        let mut cur = match self.current.take() {
            Some(cur) if cur.m == m => cur,
            _ => self.start_window(m),
        };
        let emitted = std::cell::Cell::new(0usize);
        let mut out = |o: SessionOutput| {
            emitted.set(emitted.get() + 1);
            out(o)
        };
        let (order, groups) = (std::mem::take(&mut self.order), std::mem::take(&mut self.groups));
        let mut touched: Vec<SessionRef> = Vec::new();
        while let Some(&(_, _, from, to)) = groups.get(cur.next_group) {
            if emitted.get() >= budget {
                break;
            }
            self.prefetch_groups(&order, &groups, &cur.batches, cur.next_group);
            for &(_, _, b, i) in &order[from..to] {
                let rec = &mut cur.batches[b as usize][i as usize];
                if rec.event.session_id.is_some() {
                    self.apply_keyed(m, rec, &mut touched, &mut out);
                } else {
                    self.apply_gap(m, rec, &mut touched, &mut out);
                }
            }
            self.emit_touched(m, &mut touched, &mut out);
            cur.next_group += 1;
        }
        if cur.next_group < groups.len() {
            (self.order, self.groups) = (order, groups);
            self.current = Some(cur);
            return false;
        }
        (self.order, self.groups) = (keep(order), keep(groups));
        self.spare = keep(std::mem::take(&mut self.spare));
        cur.batches = Vec::new();
        // Then the sessions due to close at m (stale index entries are skipped), taken once
        // every key's events are applied.
        let closing = cur
            .closing
            .get_or_insert_with(|| self.close_index.remove(&m).unwrap_or_default());
        while let Some(r) = closing.get(cur.next_close) {
            if emitted.get() >= budget {
                break;
            }
            self.prefetch_closing(closing, cur.next_close);
            self.close(m, r, &mut out);
            cur.next_close += 1;
        }
        if cur.next_close < closing.len() {
            self.current = Some(cur);
            return false;
        }
        true
    }

    /// Starts window `m`: expires the closed-set entries due, takes the window's events and
    /// orders them (see [`SessionStore::process`]) into the kept buffers.
    fn start_window(&mut self, m: u64) -> InProgress {
        self.expire(m);
        let batches = self.pending.remove(&m).unwrap_or_default();
        let (order, groups) = (&mut self.order, &mut self.groups);
        order.clear();
        groups.clear();
        order.reserve(batches.iter().map(Vec::len).sum());
        for (b, batch) in batches.iter().enumerate() {
            order.extend(
                batch
                    .iter()
                    .enumerate()
                    .map(|(i, r)| (route_hash(r), r.event.timestamp, b as u32, i as u32)),
            );
        }
        self.pending_count -= order.len();
        // Sort a permutation, not the records (each is a few hundred bytes to move).
        sort_by_hash(order, &mut self.spare, &mut self.counts, |a, b| {
            (a.0, a.1).cmp(&(b.0, b.1)).then_with(|| {
                let x = &batches[a.2 as usize][a.3 as usize];
                let y = &batches[b.2 as usize][b.3 as usize];
                (x.event.event_id.as_bytes(), x.partition, x.offset).cmp(&(
                    y.event.event_id.as_bytes(),
                    y.partition,
                    y.offset,
                ))
            })
        });
        // The keys' groups (keys whose hashes collide share one: each key's events stay in
        // order), taken in the order of their first event's time: sessions active together
        // were mostly opened together, so this walks memory much as the events' time order
        // would (`(time, hash)`: a total order, the same for any batching).
        for (at, &(hash, ts, _, _)) in order.iter().enumerate() {
            match groups.last_mut() {
                Some(g) if g.1 == hash => g.3 = at + 1,
                _ => groups.push((ts, hash, at, at + 1)),
            }
        }
        groups.sort_unstable_by_key(|&(ts, hash, _, _)| (ts, hash));
        InProgress {
            m,
            batches,
            next_group: 0,
            closing: None,
            next_close: 0,
        }
    }

    /// Prefetches (see [`crate::prefetch`]) what applying the key groups after `g` will read,
    /// in three steps of [`PREFETCH_STEP`] groups, each reading only what the step before
    /// fetched: the records of group `g + 3 * step`; the open sessions (structs) of the key of
    /// group `g + 2 * step`, found through its records' id or `(project, visitor)` pair; the
    /// records' attribute and tag maps and those sessions' buffers
    /// ([`Session::prefetch_buffers`]) of group `g + step`.
    fn prefetch_groups(
        &self,
        order: &[OrderEntry],
        groups: &[(i64, u64, usize, usize)],
        batches: &[Vec<Sourced>],
        g: usize,
    ) {
        let records = |g: usize| {
            let (from, to) = groups.get(g).map_or((0, 0), |&(_, _, from, to)| (from, to));
            order[from..to]
                .iter()
                .map(|&(_, _, b, i)| &batches[b as usize][i as usize])
        };
        let sessions = |g: usize| match records(g).next().map(|r| &r.event) {
            Some(e) => match e.session_id.as_deref() {
                Some(sid) => self.open_keyed(sid),
                None => self.open_gap(e.project_id, &e.visitor_id),
            },
            None => &[],
        };
        for rec in records(g + 3 * PREFETCH_STEP) {
            prefetch(rec, 512);
        }
        for s in sessions(g + 2 * PREFETCH_STEP) {
            prefetch::<Session>(s, 1024);
        }
        for rec in records(g + PREFETCH_STEP) {
            if let Some(a) = &rec.event.attributes {
                prefetch(a.as_slice(), 1024);
            }
            if let Some(t) = &rec.event.tags {
                prefetch(t.as_slice(), 64);
            }
        }
        for s in sessions(g + PREFETCH_STEP) {
            s.prefetch_buffers();
        }
    }

    /// [`SessionStore::prefetch_groups`] for the close pass over `closing`, from its entry
    /// `n`: the key of entry `n + 3 * step`, the open sessions of the key of `n + 2 * step`,
    /// their buffers at `n + step`.
    fn prefetch_closing(&self, closing: &[SessionRef], n: usize) {
        let sessions = |n: usize| match closing.get(n) {
            Some(SessionRef::Id(k)) => self.open_keyed(k),
            Some(SessionRef::Gap(p, v, _)) => self.open_gap(*p, v),
            None => &[],
        };
        match closing.get(n + 3 * PREFETCH_STEP) {
            Some(SessionRef::Id(k)) => prefetch(k.as_bytes(), 128),
            Some(SessionRef::Gap(_, v, _)) => prefetch(v.as_bytes(), 128),
            None => {}
        }
        for s in sessions(n + 2 * PREFETCH_STEP) {
            prefetch::<Session>(s, 1024);
        }
        for s in sessions(n + PREFETCH_STEP) {
            s.prefetch_buffers();
        }
    }

    /// For prefetching: the open session of a client id, if any.
    fn open_keyed(&self, session_id: &str) -> &[Session] {
        self.sessions
            .get(session_id)
            .map_or(&[], |s| std::slice::from_ref(&**s))
    }

    /// For prefetching: the first two open sessions of a `(project, visitor)` pair's gap group
    /// (rarely more are open at once).
    fn open_gap(&self, project_id: u64, visitor_id: &str) -> &[Session] {
        self.gaps
            .get(&PairRef(project_id, visitor_id))
            .map_or(&[], |g| &g.open[..g.open.len().min(2)])
    }

    /// Emits the snapshots of the sessions in `touched` (changed in window `m`), and empties
    /// it. A session that closes at `m` is left to the close pass, which emits its one
    /// snapshot of the window, closed.
    fn emit_touched(&mut self, m: u64, touched: &mut Vec<SessionRef>, out: &mut impl FnMut(SessionOutput)) {
        for r in touched.drain(..) {
            let Some(s) = self.get(&r) else { continue };
            if s.close_at <= m {
                continue;
            }
            let mut snap = s.snapshot(matches!(r, SessionRef::Gap(..)), m, false, None);
            if self.cfg.emit_state {
                snap.state = Some(s.to_state());
            }
            out(SessionOutput::Snapshot(snap));
            self.counters.snapshots += 1;
        }
    }

    /// Restores a session that was open at the end of window `resume - 1` (read back from a
    /// durable sink); the job then resumes processing at window `resume`. `gap_based` tells
    /// whether it is keyed by `(project_id, visitor_id)` instead of its id.
    pub fn restore_open(&mut self, gap_based: bool, mut session: Session, resume: u64) {
        session.close_at = self.cfg.close_window(session.end(), resume);
        session.indexed_at = session.close_at;
        self.open += 1;
        if gap_based {
            let pair: Pair = (session.project_id(), session.visitor_id().into());
            let r = SessionRef::Gap(pair.0, pair.1.clone(), session.id().into());
            self.close_index.entry(session.close_at).or_default().push(r);
            self.gaps.entry(pair).or_default().open.push(session);
        } else {
            let key: Rc<str> = session.id().into();
            self.close_index
                .entry(session.close_at)
                .or_default()
                .push(SessionRef::Id(key.clone()));
            if self.sessions.insert(key, Box::new(session)).is_some() {
                self.open -= 1;
            }
        }
    }

    /// Restores a closed-set entry: the session closed at window `closed_at`, so its key stays
    /// closed through `closed_at + ceil(gap / W)`. Gap-based sessions give their pair and span.
    pub fn restore_closed(&mut self, gap: Option<(u64, &str, i64, i64)>, session_id: &str, closed_at: u64) {
        let until = closed_at + self.cfg.closed_windows();
        match gap {
            None => {
                let key: Rc<str> = session_id.into();
                self.closed.insert(Rc::clone(&key), until);
                self.expire_index.entry(until).or_default().push(ClosedRef::Id(key));
            }
            Some((project, visitor, start, end)) => {
                let pair: Pair = (project, visitor.into());
                self.gaps
                    .entry(pair.clone())
                    .or_default()
                    .closed
                    .push((start, end, until));
                self.expire_index
                    .entry(until)
                    .or_default()
                    .push(ClosedRef::Gap(pair.0, pair.1));
            }
        }
    }

    fn get(&self, r: &SessionRef) -> Option<&Session> {
        match r {
            SessionRef::Id(k) => self.sessions.get(k).map(|s| &**s),
            SessionRef::Gap(p, v, id) => {
                let g = self.gaps.get(&PairRef(*p, v))?;
                g.open.iter().find(|s| s.id() == id.as_ref())
            }
        }
    }

    fn late(&mut self, rec: &mut Sourced, out: &mut impl FnMut(SessionOutput)) {
        self.counters.late += 1;
        out(SessionOutput::DeadLetter(DeadLetter {
            partition: rec.partition,
            offset: rec.offset,
            reason: SESSION_CLOSED.to_string(),
            raw: std::mem::take(&mut rec.raw),
        }));
    }

    /// After session `s` accepted an event in window `m`: moves its closing window, files its
    /// close-index entry if it has none yet, and lists it in `touched` at its first event of
    /// `m`. `r` makes the session's reference, only when one of those takes it (a gap
    /// session's is two strings to allocate).
    fn note_accepted(
        cfg: &SessionConfig,
        idx: &mut BTreeMap<u64, Vec<SessionRef>>,
        touched: &mut Vec<SessionRef>,
        s: &mut Session,
        m: u64,
        r: impl FnOnce(&Session) -> SessionRef,
    ) {
        // One index entry per session: a later closing window only updates `close_at`, and the
        // entry is re-filed when its window comes (so the index never holds stale copies).
        s.close_at = cfg.close_window(s.end(), m);
        let (first_indexed, first_touched) = (s.indexed_at == u64::MAX, s.touched != m + 1);
        if !(first_indexed || first_touched) {
            return;
        }
        let r = r(s);
        if first_indexed {
            s.indexed_at = s.close_at;
            idx.entry(s.close_at).or_default().push(r.clone());
        }
        if first_touched {
            s.touched = m + 1;
            touched.push(r);
        }
    }

    fn apply_keyed(
        &mut self,
        m: u64,
        rec: &mut Sourced,
        touched: &mut Vec<SessionRef>,
        out: &mut impl FnMut(SessionOutput),
    ) {
        let Some(sid) = rec.event.session_id.as_deref() else {
            return;
        };
        if self.closed.get(sid).is_some_and(|&until| until >= m) {
            return self.late(rec, out);
        }
        let e = &rec.event;
        // One hash lookup per event.
        let (key, s) = match self.sessions.entry_ref(sid) {
            EntryRef::Occupied(o) => (Rc::clone(o.key()), o.into_mut()),
            EntryRef::Vacant(v) => {
                self.counters.sessions_opened += 1;
                self.open += 1;
                let key: Rc<str> = sid.into();
                (
                    Rc::clone(&key),
                    v.insert_with_key(key, Box::new(Session::open(sid, e, m))),
                )
            }
        };
        if s.has_event(&e.event_id) {
            self.counters.duplicates += 1;
            return;
        }
        s.accept(e, &self.cfg);
        self.counters.accepted += 1;
        Self::note_accepted(&self.cfg, &mut self.close_index, touched, s, m, |_| SessionRef::Id(key));
    }

    fn apply_gap(
        &mut self,
        m: u64,
        rec: &mut Sourced,
        touched: &mut Vec<SessionRef>,
        out: &mut impl FnMut(SessionOutput),
    ) {
        let cfg = &self.cfg;
        let e = &rec.event;
        let t = e.timestamp;
        // Looked up without allocating: a key is built only for a new group.
        let group = self.gaps.entry_ref(&PairRef(e.project_id, &e.visitor_id)).or_default();
        let mut matches: Vec<usize> = (0..group.open.len())
            .filter(|&i| cfg.within_gap(group.open[i].start(), group.open[i].end(), t))
            .collect();
        if matches.iter().any(|&i| group.open[i].has_event(&e.event_id)) {
            self.counters.duplicates += 1;
            return;
        }
        let survivor_at = if matches.is_empty() {
            if group
                .closed
                .iter()
                .any(|&(s, en, until)| until >= m && cfg.within_gap(s, en, t))
            {
                return self.late(rec, out);
            }
            self.counters.sessions_opened += 1;
            self.open += 1;
            let id = format!("{}@{}", e.visitor_id, t);
            group.open.push(Session::open(&id, e, m));
            group.open.len() - 1
        } else {
            // Merge every match into the one with the smallest (start, session_id).
            matches.sort_by(|&a, &b| {
                let (x, y) = (&group.open[a], &group.open[b]);
                (x.start(), x.id()).cmp(&(y.start(), y.id()))
            });
            let survivor_id: Box<str> = group.open[matches[0]].id().into();
            let mut others: Vec<Session> = Vec::new();
            // Remove the merged-away sessions (highest index first keeps indexes valid).
            let mut remove: Vec<usize> = matches[1..].to_vec();
            remove.sort_unstable_by(|a, b| b.cmp(a));
            for i in remove {
                others.push(group.open.swap_remove(i));
            }
            others.sort_by(|x, y| (x.start(), x.id()).cmp(&(y.start(), y.id())));
            let at = group
                .open
                .iter()
                .position(|s| s.id() == survivor_id.as_ref())
                .unwrap_or(0);
            for other in others {
                out(SessionOutput::Snapshot(other.snapshot(
                    true,
                    m,
                    true,
                    Some(&survivor_id),
                )));
                self.counters.snapshots += 1;
                self.counters.sessions_closed += 1;
                self.open -= 1;
                let dropped = group.open[at].absorb(other, cfg);
                self.counters.accepted -= dropped;
                self.counters.duplicates += dropped;
            }
            at
        };
        let s = &mut group.open[survivor_at];
        s.accept(e, cfg);
        self.counters.accepted += 1;
        Self::note_accepted(cfg, &mut self.close_index, touched, s, m, |s| {
            SessionRef::Gap(e.project_id, e.visitor_id.as_str().into(), s.id().into())
        });
    }

    /// Handles the close-index entry `r` filed at window `m`: closes the session if it is due
    /// at `m` (emitting its final snapshot), or re-files the entry at its later closing window.
    fn close(&mut self, m: u64, r: &SessionRef, out: &mut impl FnMut(SessionOutput)) {
        let until = m + self.cfg.closed_windows();
        let session = match r {
            SessionRef::Id(k) => self.sessions.get_mut(k.as_ref()).map(|s| &mut **s),
            SessionRef::Gap(p, v, id) => self
                .gaps
                .get_mut(&PairRef(*p, v))
                .and_then(|g| g.open.iter_mut().find(|s| s.id() == id.as_ref())),
        };
        let Some(s) = session else { return };
        if s.indexed_at != m {
            return;
        }
        if s.close_at > m {
            s.indexed_at = s.close_at;
            self.close_index.entry(s.close_at).or_default().push(r.clone());
            return;
        }
        let (session, gap_based) = match r {
            SessionRef::Id(k) => {
                let Some(s) = self.sessions.remove(k.as_ref()) else {
                    return;
                };
                let s = *s;
                self.closed.insert(Rc::clone(k), until);
                self.expire_index
                    .entry(until)
                    .or_default()
                    .push(ClosedRef::Id(Rc::clone(k)));
                (s, false)
            }
            SessionRef::Gap(p, v, id) => {
                let Some(g) = self.gaps.get_mut(&PairRef(*p, v)) else {
                    return;
                };
                let Some(i) = g.open.iter().position(|s| s.id() == id.as_ref()) else {
                    return;
                };
                let s = g.open.swap_remove(i);
                g.closed.push((s.start(), s.end(), until));
                self.expire_index
                    .entry(until)
                    .or_default()
                    .push(ClosedRef::Gap(*p, v.clone()));
                (s, true)
            }
        };
        out(SessionOutput::Snapshot(session.snapshot(gap_based, m, true, None)));
        self.counters.snapshots += 1;
        self.counters.sessions_closed += 1;
        self.open -= 1;
    }

    /// Drops closed-set entries whose time ran out before window `m`.
    fn expire(&mut self, m: u64) {
        while let Some(entry) = self.expire_index.first_entry() {
            if *entry.key() >= m {
                break;
            }
            let (until, refs) = entry.remove_entry();
            for r in refs {
                match r {
                    ClosedRef::Id(k) => {
                        if self.closed.get(&k) == Some(&until) {
                            self.closed.remove(&k);
                        }
                    }
                    ClosedRef::Gap(p, v) => {
                        let key = (p, v);
                        if let Some(g) = self.gaps.get_mut(&key) {
                            g.closed.retain(|c| c.2 >= m);
                            if g.closed.is_empty() && g.open.is_empty() {
                                self.gaps.remove(&key);
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Event;

    const W: u64 = 1_000;

    /// A borrowed pair must find the owned one (same hash, same equality), and an entry made
    /// through it must own the same key: otherwise every gap event would open a new group.
    #[test]
    fn a_borrowed_pair_finds_and_makes_the_owned_one() {
        let mut gaps: HashMap<Pair, u32> = HashMap::new();
        for (i, v) in ["v1", "visitor-with-a-longer-id", ""].iter().enumerate() {
            gaps.insert((i as u64, (*v).into()), i as u32);
        }
        assert_eq!(gaps.get(&PairRef(1, "visitor-with-a-longer-id")), Some(&1));
        assert_eq!(gaps.get(&PairRef(2, "")), Some(&2));
        assert_eq!(gaps.get(&PairRef(1, "v1")), None);
        *gaps.entry_ref(&PairRef(0, "v1")).or_default() += 10;
        *gaps.entry_ref(&PairRef(7, "v7")).or_default() += 5;
        assert_eq!(gaps.len(), 4);
        assert_eq!(gaps.get(&(0, "v1".into())), Some(&10));
        assert_eq!(gaps.get(&(7, "v7".into())), Some(&5));
    }

    fn cfg() -> SessionConfig {
        SessionConfig {
            window_ms: W,
            gap_ms: 3 * W,
            lateness_ms: 0,
            max_events: 10,
            emit_state: false,
            routing: crate::session::Routing::Hash,
        }
    }

    fn rec(id: &str, session: Option<&str>, visitor: &str, ts: i64) -> Sourced {
        Sourced {
            partition: 0,
            offset: ts as u64,
            raw: format!("raw-{id}"),
            event: Event {
                revenue: Some(1),
                ..Event::minimal(id, session, visitor, 1, ts)
            },
        }
    }

    /// Processes every window with work up to `until` (inclusive), like the operator does.
    fn run(store: &mut SessionStore, until: u64) -> Vec<SessionOutput> {
        let mut out = Vec::new();
        while let Some(m) = store.next_window() {
            if m > until {
                break;
            }
            store.process(m, &mut |o| out.push(o));
        }
        out
    }

    fn snaps(out: &[SessionOutput]) -> Vec<(&str, u64, bool, Option<&str>, u64)> {
        out.iter()
            .filter_map(|o| match o {
                SessionOutput::Snapshot(s) => Some((
                    s.session_id.as_str(),
                    s.window,
                    s.closed,
                    s.merged_into.as_deref(),
                    s.event_count,
                )),
                SessionOutput::DeadLetter(_) => None,
            })
            .collect()
    }

    proptest::proptest! {
        /// The bucketed sort orders like a comparison sort, at sizes on both sides of its
        /// cut-over, with hashes that share top bits, equal hashes, and equal timestamps.
        #[test]
        fn the_bucketed_sort_orders_like_a_comparison_sort(
            entries in proptest::collection::vec((0u8..4, proptest::prelude::any::<u64>(), 0i64..8), 0..3000),
            pool in proptest::collection::vec(proptest::prelude::any::<u64>(), 1..8),
        ) {
            let mut order: Vec<OrderEntry> = entries
                .iter()
                .enumerate()
                .map(|(i, &(kind, h, ts))| {
                    let hash = match kind {
                        // A hash from a small pool: equal hashes, ordered by time then position.
                        0 => pool[h as usize % pool.len()],
                        // Only the low bits differ: one bucket.
                        1 => pool[0] ^ (h & 0xffff),
                        _ => h,
                    };
                    (hash, ts, (i % 3) as u32, i as u32)
                })
                .collect();
            let mut want = order.clone();
            want.sort_unstable();
            let (mut spare, mut counts) = (Vec::new(), Vec::new());
            sort_by_hash(&mut order, &mut spare, &mut counts, |a, b| a.cmp(b));
            proptest::prop_assert_eq!(order, want);
        }

        /// A window processed in slices of any size gives the outputs of one `process` call,
        /// in the same order, and the same counters: keyed and gap-based sessions, duplicates,
        /// events for closed keys (dead letters), closes in windows without events.
        #[test]
        fn slices_of_any_size_give_the_outputs_of_one_pass(
            events in proptest::collection::vec((0u8..12, 0u8..4, 0i64..20 * W as i64, 0u8..40), 1..300),
            budget in 1usize..6,
        ) {
            let (mut whole, mut sliced) = (SessionStore::new(cfg()), SessionStore::new(cfg()));
            for (key, visitor, ts, id) in &events {
                let session = (*key < 9).then(|| format!("s{key}"));
                let r = rec(&format!("e{id}"), session.as_deref(), &format!("v{visitor}"), *ts);
                whole.insert(*ts as u64 / W, r.clone());
                sliced.insert(*ts as u64 / W, r);
            }
            let expected = run(&mut whole, u64::MAX);
            let mut got = Vec::new();
            while let Some(m) = sliced.next_window() {
                loop {
                    let before = got.len();
                    let done = sliced.process_some(m, budget, &mut |o| got.push(o));
                    if done {
                        break;
                    }
                    // A slice ends only once it used its budget, and the window stays next.
                    proptest::prop_assert!(got.len() - before >= budget);
                    proptest::prop_assert_eq!(sliced.next_window(), Some(m));
                }
            }
            proptest::prop_assert_eq!(&got, &expected);
            proptest::prop_assert_eq!(sliced.counters(), whole.counters());
            proptest::prop_assert_eq!(sliced.open_sessions(), 0);
        }
    }

    #[test]
    fn a_window_of_many_sessions_is_processed_in_slices_of_the_budget() {
        let mut store = SessionStore::new(cfg());
        for i in 0..100 {
            store.insert(5, rec(&format!("e{i}"), Some(&format!("s{i}")), "v", 5 * W as i64 + i));
        }
        let mut sizes = Vec::new();
        loop {
            let mut n = 0;
            let done = store.process_some(5, 10, &mut |_| n += 1);
            sizes.push(n);
            if done {
                break;
            }
        }
        // One snapshot per session and key group: ten slices of ten, then an empty close pass.
        assert_eq!(sizes.iter().sum::<usize>(), 100);
        assert!(sizes.len() >= 10, "{sizes:?}");
        assert!(sizes.iter().all(|&n| n <= 10), "{sizes:?}");
        assert_eq!(store.next_window(), Some(5 + 3), "the sessions close 3 windows on");
    }

    #[test]
    fn a_kept_buffer_is_emptied_and_shrinks_after_a_burst() {
        let mut burst: Vec<u64> = (0..100_000).collect();
        burst.truncate(10);
        let kept = keep(burst);
        assert!(kept.is_empty());
        assert!(kept.capacity() < 100_000, "capacity {}", kept.capacity());
        let mut busy: Vec<u64> = Vec::with_capacity(100_000);
        busy.extend(0..60_000);
        let kept = keep(busy);
        assert!(kept.is_empty());
        assert_eq!(kept.capacity(), 100_000);
    }

    #[test]
    fn sessions_close_in_windows_without_data() {
        let mut st = SessionStore::new(cfg());
        st.insert(10, rec("a", Some("s"), "v", 10_500));
        let out = run(&mut st, 10);
        assert_eq!(snaps(&out), [("s", 10, false, None, 1)]);
        // end 10_500 + gap 3_000 < (m+1) * 1_000  =>  m = 13; nothing arrives meanwhile.
        assert_eq!(st.next_window(), Some(13));
        let out = run(&mut st, 100);
        assert_eq!(snaps(&out), [("s", 13, true, None, 1)]);
        assert_eq!(st.open_sessions(), 0);
        assert_eq!(st.counters().sessions_closed, 1);
    }

    #[test]
    fn a_session_changed_in_its_closing_window_gets_one_closed_snapshot() {
        let mut st = SessionStore::new(cfg());
        st.insert(10, rec("a", Some("s"), "v", 10_000));
        st.insert(10, rec("x", Some("t"), "v", 10_500));
        run(&mut st, 12);
        // Window 13 closes both (end + 3_000 < 14_000). A late event of `s` is applied first:
        // `s` still gets one snapshot at 13, closed, with both events; `t` one too.
        st.insert(13, rec("b", Some("s"), "v", 9_000));
        let out = run(&mut st, 13);
        let mut got = snaps(&out);
        got.sort();
        assert_eq!(got, [("s", 13, true, None, 2), ("t", 13, true, None, 1)]);
        assert_eq!(st.counters().snapshots, 4);
        assert_eq!(st.open_sessions(), 0);
    }

    #[test]
    fn closed_keys_reject_events_until_the_entry_expires() {
        let mut st = SessionStore::new(cfg());
        st.insert(10, rec("a", Some("s"), "v", 10_000));
        run(&mut st, 100); // closes at 13; closed through 13 + 3 = 16
        st.insert(16, rec("b", Some("s"), "v", 16_000));
        let out = run(&mut st, 16);
        assert!(matches!(&out[..], [SessionOutput::DeadLetter(d)] if d.reason == "session_closed" && d.raw == "raw-b"));
        st.insert(17, rec("c", Some("s"), "v", 17_000));
        let out = run(&mut st, 17);
        assert_eq!(snaps(&out), [("s", 17, false, None, 1)]);
        let c = st.counters();
        assert_eq!((c.accepted, c.late, c.sessions_opened), (2, 1, 2));
    }

    #[test]
    fn one_snapshot_per_session_per_window_and_duplicates_counted() {
        let mut st = SessionStore::new(cfg());
        for (id, ts) in [("a", 10_100), ("b", 10_200), ("a", 10_300)] {
            st.insert(10, rec(id, Some("s"), "v", ts));
        }
        let out = run(&mut st, 10);
        assert_eq!(snaps(&out), [("s", 10, false, None, 2)]);
        assert_eq!(st.counters().duplicates, 1);
    }

    #[test]
    fn gap_sessions_merge_into_the_earliest() {
        let mut st = SessionStore::new(cfg());
        st.insert(20, rec("a", None, "v", 20_000));
        run(&mut st, 20);
        // Two late events in window 21: the first opens v@15000 (too far from v@20000), the
        // second is within the gap of both, so v@20000 merges into the earlier v@15000.
        st.insert(21, rec("l1", None, "v", 15_000));
        st.insert(21, rec("l2", None, "v", 17_500));
        let out = run(&mut st, 21);
        let mut got = snaps(&out);
        got.sort();
        assert_eq!(
            got,
            [
                ("v@15000", 21, false, None, 3),
                ("v@20000", 21, true, Some("v@15000"), 1)
            ]
        );
        let c = st.counters();
        assert_eq!((c.accepted, c.sessions_opened, c.sessions_closed), (3, 2, 1));
        // The survivor ends with every event: end 20_000 + gap < (m + 1) * W  =>  m = 23.
        let out = run(&mut st, 1_000);
        assert_eq!(snaps(&out), [("v@15000", 23, true, None, 3)]);
    }

    #[test]
    fn a_window_split_into_batches_is_processed_like_one() {
        // 200 events of 20 sessions (some duplicated, some without an id) for one window,
        // delivered in one batch, event by event, and in uneven batches in reverse order.
        let events: Vec<Sourced> = (0..200u64)
            .map(|i| {
                let ts = 10_000 + ((i * 37) % 1_000) as i64;
                let id = format!("e{}", i % 190);
                let session = (i % 7 != 0).then(|| format!("s{}", i % 20));
                let mut r = rec(&id, session.as_deref(), &format!("v{}", i % 5), ts);
                r.offset = i;
                r
            })
            .collect();
        let outputs = |store: &mut SessionStore| -> Vec<String> {
            run(store, 1_000)
                .into_iter()
                .map(|o| match o {
                    SessionOutput::Snapshot(s) => s.json,
                    SessionOutput::DeadLetter(d) => format!("{d:?}"),
                })
                .collect()
        };
        let mut one = SessionStore::new(cfg());
        one.insert_batch(10, &mut events.clone());
        let mut single = SessionStore::new(cfg());
        for r in events.iter().cloned() {
            single.insert(10, r);
        }
        let mut split = SessionStore::new(cfg());
        let mut rest = events.clone();
        rest.reverse();
        for size in [1, 40, 3, 17, 100, 39] {
            let mut batch: Vec<Sourced> = rest.drain(..size.min(rest.len())).collect();
            split.insert_batch(10, &mut batch);
            assert!(batch.is_empty());
        }
        assert_eq!(split.pending_events(), 200);
        let want = outputs(&mut one);
        assert!(want.len() > 20);
        assert_eq!(outputs(&mut single), want);
        assert_eq!(outputs(&mut split), want);
        assert_eq!(one.counters(), split.counters());
        assert_eq!((one.pending_events(), split.pending_events()), (0, 0));
    }

    #[test]
    fn restored_sessions_close_and_keep_their_events() {
        let mut st = SessionStore::new(cfg());
        st.insert(10, rec("a", Some("s"), "v", 10_000));
        let mut state = None;
        let mut c = cfg();
        c.emit_state = true;
        let mut with_state = SessionStore::new(c);
        with_state.insert(10, rec("a", Some("s"), "v", 10_000));
        with_state.process(10, &mut |o| {
            if let SessionOutput::Snapshot(s) = o {
                state = s.state;
            }
        });
        let session = Session::from_state(&state.unwrap()).unwrap();
        let mut restored = SessionStore::new(cfg());
        restored.restore_open(false, session, 11);
        restored.insert(12, rec("b", Some("s"), "v", 12_000));
        st.insert(12, rec("b", Some("s"), "v", 12_000));
        let a = run(&mut st, 1_000);
        let b = run(&mut restored, 1_000);
        let json = |o: &[SessionOutput]| {
            o.iter()
                .filter_map(|x| match x {
                    SessionOutput::Snapshot(s) if s.window >= 11 => Some(s.json.clone()),
                    _ => None,
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(json(&a), json(&b));
        restored.restore_closed(None, "x", 20);
        restored.insert(21, rec("z", Some("x"), "v", 21_000));
        let out = run(&mut restored, 21);
        assert!(matches!(&out[..], [SessionOutput::DeadLetter(_)]));
    }
}
