//! Which worker owns a session key: [`Routing`], and Kafka's default partitioner
//! ([`murmur2`], [`kafka_partition`]) it can follow.
//!
//! Any routing gives the same output: all events of a session meet at one worker either way.
//! What it decides is how many events cross to another worker on their way to the session
//! operator. With [`Routing::Hash`] a share `1 - 1/workers` of them does; with
//! [`Routing::Partitions`], on a topic keyed by session (the producer's default partitioner
//! picks the partition from the key), none does, and each worker keeps the events it read in
//! its own cache: ~5% less CPU for the 2-worker Kafka job and replay (docs/performance.md,
//! "Engine"). A SessionDB job keeps [`Routing::Hash`]: its restore reads each worker's keys
//! from the salt buckets it owns, and the salt is the key hash.

use serde::{Deserialize, Serialize};

use super::operator::key_hash;

/// How the session operator spreads session keys over the workers (see the module doc).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Routing {
    /// Worker `key_hash % workers` ([`key_hash`]): balanced whatever the input's layout.
    #[default]
    Hash,
    /// The worker that reads (`partition % workers`) the partition out of this many (a count of
    /// partitions) that Kafka's default partitioner picks for the session's key
    /// ([`partition_key`]). Events a producer put elsewhere are exchanged to that worker.
    /// Balanced only when the workers divide the partitions: see [`Routing::for_input`].
    Partitions(u32),
}

impl Routing {
    /// The routing for an input of `partitions` partitions read by `workers` workers:
    /// [`Routing::Partitions`] when there are several workers and they divide the partitions
    /// (every worker reads as many partitions, so owns as many keys), else [`Routing::Hash`].
    pub fn for_input(partitions: usize, workers: usize) -> Routing {
        match u32::try_from(partitions) {
            Ok(p) if workers > 1 && p > 0 && partitions.is_multiple_of(workers) => Routing::Partitions(p),
            _ => Routing::Hash,
        }
    }

    /// A number whose remainder by the number of workers is the key's owner (what timely's
    /// exchange takes: the remainder, or the low bits when the workers are a power of two,
    /// the same here). The key is `session_id`, else `(project_id, visitor_id)`.
    #[inline]
    pub fn route(&self, session_id: Option<&str>, project_id: u64, visitor_id: &str) -> u64 {
        match *self {
            Routing::Hash => key_hash(session_id, project_id, visitor_id),
            Routing::Partitions(p) => u64::from(key_partition(session_id, project_id, visitor_id, p)),
        }
    }

    /// The worker (of `workers`) that owns the key.
    pub fn owner(&self, session_id: Option<&str>, project_id: u64, visitor_id: &str, workers: usize) -> usize {
        (self.route(session_id, project_id, visitor_id) % workers.max(1) as u64) as usize
    }
}

/// Kafka's (Java client) murmur2 hash of a message key.
pub fn murmur2(data: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    const SEED: u32 = 0x9747_b28c;
    let mut h = SEED ^ (data.len() as u32);
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

/// The partition a keyed Kafka producer with the default (murmur2) partitioner picks for
/// `key` among `partitions` (treated as 1 when 0).
pub fn kafka_partition(key: &[u8], partitions: u32) -> u32 {
    (murmur2(key) & 0x7fff_ffff) % partitions.max(1)
}

/// The partitioning key of an event: its `session_id`, or `"{project_id}:{visitor_id}"` when
/// it has none.
pub fn partition_key(session_id: Option<&str>, project_id: u64, visitor_id: &str) -> Vec<u8> {
    match session_id {
        Some(s) => s.as_bytes().to_vec(),
        None => format!("{project_id}:{visitor_id}").into_bytes(),
    }
}

/// `kafka_partition(&partition_key(..), partitions)` without allocating for the usual keys.
fn key_partition(session_id: Option<&str>, project_id: u64, visitor_id: &str, partitions: u32) -> u32 {
    match session_id {
        Some(s) => kafka_partition(s.as_bytes(), partitions),
        None => {
            // `{project_id}:{visitor_id}` on the stack (visitor ids are at most 128 bytes).
            let mut digits = itoa::Buffer::new();
            let project = digits.format(project_id).as_bytes();
            let len = project.len() + 1 + visitor_id.len();
            let mut buf = [0u8; 160];
            match buf.get_mut(..len) {
                Some(key) => {
                    key[..project.len()].copy_from_slice(project);
                    key[project.len()] = b':';
                    key[project.len() + 1..].copy_from_slice(visitor_id.as_bytes());
                    kafka_partition(key, partitions)
                }
                None => kafka_partition(&partition_key(None, project_id, visitor_id), partitions),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kafka_murmur2_matches_the_java_client() {
        // Test vectors of Kafka's Utils.murmur2.
        assert_eq!(murmur2(b"21") as i32, -973_932_308);
        assert_eq!(murmur2(b"foobar") as i32, -790_332_482);
        assert_eq!(murmur2(b"a-little-bit-long-string") as i32, -985_981_536);
        assert_eq!(murmur2(b"a-little-bit-longer-string") as i32, -1_486_304_829);
        assert_eq!(
            murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8") as i32,
            -58_897_971
        );
        assert_eq!(murmur2(b"abc") as i32, 479_470_107);
        assert!(kafka_partition(b"anything", 7) < 7);
        assert_eq!(kafka_partition(b"anything", 0), 0);
    }

    #[test]
    fn partitions_routing_only_where_the_workers_divide_the_partitions() {
        assert_eq!(Routing::for_input(4, 2), Routing::Partitions(4));
        assert_eq!(Routing::for_input(12, 4), Routing::Partitions(12));
        assert_eq!(Routing::for_input(4, 4), Routing::Partitions(4));
        // Unbalanced (one worker would read, and own, twice the others' share), fewer
        // partitions than workers, one worker, no partition: the hash.
        assert_eq!(Routing::for_input(4, 3), Routing::Hash);
        assert_eq!(Routing::for_input(2, 4), Routing::Hash);
        assert_eq!(Routing::for_input(4, 1), Routing::Hash);
        assert_eq!(Routing::for_input(0, 2), Routing::Hash);
        assert_eq!(Routing::for_input(1 << 33, 2), Routing::Hash);
    }

    #[test]
    fn a_key_belongs_to_the_worker_reading_its_partition() {
        let visitor_long = "v".repeat(128);
        let keys: Vec<(Option<String>, u64, String)> = (0..2000u64)
            .map(|i| match i % 3 {
                0 => (
                    Some(format!("{:016x}", i.wrapping_mul(0x9e37_79b9_7f4a_7c15))),
                    7,
                    "v".to_string(),
                ),
                1 => (None, u64::MAX - i, format!("{i:016x}")),
                _ => (None, i, visitor_long.clone()),
            })
            .collect();
        for (partitions, workers) in [(4u32, 2usize), (8, 4), (6, 3), (4, 4)] {
            let routing = Routing::for_input(partitions as usize, workers);
            assert_eq!(routing, Routing::Partitions(partitions));
            let mut owned = vec![0usize; workers];
            for (sid, project, visitor) in &keys {
                let p = kafka_partition(&partition_key(sid.as_deref(), *project, visitor), partitions);
                let owner = routing.owner(sid.as_deref(), *project, visitor, workers);
                assert_eq!(owner, p as usize % workers, "{sid:?} {project} {visitor}");
                // What timely's exchange does with the route: the low bits for a power of two.
                let route = routing.route(sid.as_deref(), *project, visitor);
                if workers.is_power_of_two() {
                    assert_eq!((route & (workers as u64 - 1)) as usize, owner);
                }
                owned[owner] += 1;
            }
            // Every worker owns a fair share.
            assert!(owned.iter().all(|&n| n > keys.len() / workers / 2), "{owned:?}");
        }
    }

    #[test]
    fn hash_routing_is_the_key_hash() {
        let r = Routing::Hash;
        assert_eq!(r.route(Some("s1"), 0, ""), key_hash(Some("s1"), 0, ""));
        assert_eq!(r.route(None, 7, "v1"), key_hash(None, 7, "v1"));
        assert_eq!(r.owner(None, 7, "v1", 3), (key_hash(None, 7, "v1") % 3) as usize);
    }

    #[test]
    fn routing_reads_and_writes_as_json() {
        let p: Routing = serde_json::from_str(r#"{"partitions":4}"#).unwrap_or_default();
        assert_eq!(p, Routing::Partitions(4));
        assert_eq!(serde_json::from_str::<Routing>(r#""hash""#).ok(), Some(Routing::Hash));
        assert!(serde_json::from_str::<Routing>(r#""modulo""#).is_err());
    }
}
