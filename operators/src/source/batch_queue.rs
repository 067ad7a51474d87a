//! Batch reads of a Kafka partition's queue: many messages per librdkafka call.
//!
//! rdkafka 0.39 reads a queue one message per call (`PartitionQueue::poll`), and each call
//! reads the clock (rdkafka's `Instant::now`, librdkafka's poll timestamps), allocates an
//! `Arc` for the message's event, and builds and destroys the event around it. On the 1M
//! benchmark that path was ~5% of the job's samples, nearly half of it `clock_gettime`.
//! librdkafka's `rd_kafka_consume_batch_queue` serves up to N messages in one call (one poll
//! start and end, no event objects); rdkafka has no safe wrapper for it, so this module wraps
//! it. It is one of the workspace's two `unsafe` places (the other is `crate::prefetch`).
//!
//! A [`BatchQueue`] is a second handle on a partition's queue, next to rdkafka's
//! [`PartitionQueue`](rdkafka::consumer::base_consumer::PartitionQueue) split from the same
//! consumer (which keeps the queue's wake-up callback and keeps it unforwarded). librdkafka's
//! rules for the batch API (INTRODUCTION.md, "Note on Batch consume APIs"): one batch call at a
//! time per consumer, and no seek, pause, resume or rebalance concurrently with it. The Kafka
//! source keeps both: each worker owns its consumer and calls everything on it from its own
//! thread, and the consumer is statically assigned (it never rebalances).

use std::ffi::CString;
use std::ptr::NonNull;
use std::sync::Arc;

use rdkafka::bindings as rdsys;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::types::RDKafkaRespErr;

/// One read message as `(partition, offset, payload)`, or what librdkafka reported instead.
pub(crate) type Polled = KafkaResult<(i32, i64, Option<Vec<u8>>)>;

/// A handle on one partition's message queue of a consumer, read in batches. It holds the
/// consumer, so the client outlives the handle (librdkafka requires every queue handle to be
/// destroyed before its client).
pub(crate) struct BatchQueue<C: ConsumerContext + 'static> {
    queue: NonNull<rdsys::rd_kafka_queue_t>,
    /// Working space for the message pointers of one call (empty between calls).
    slots: Vec<*mut rdsys::rd_kafka_message_t>,
    _consumer: Arc<BaseConsumer<C>>,
}

// SAFETY: librdkafka's queue handles may be used from any thread (its queues lock
// internally); the raw pointers in `slots` never hold a message between calls. The consumer
// handle must be `Send` itself (the bound): this covers only the raw pointers.
#[allow(unsafe_code)]
unsafe impl<C: ConsumerContext + 'static> Send for BatchQueue<C> where Arc<BaseConsumer<C>>: Send {}

#[allow(unsafe_code)]
impl<C: ConsumerContext + 'static> BatchQueue<C> {
    /// A handle on the queue of `partition` of `topic` in `consumer`, or `None` when librdkafka
    /// has no such partition queue (the consumer must be assigned the partition).
    pub(crate) fn open(consumer: &Arc<BaseConsumer<C>>, topic: &str, partition: i32) -> Option<Self> {
        let topic = CString::new(topic).ok()?;
        // SAFETY: the client pointer is valid while `consumer` lives, and `topic` is a
        // NUL-terminated string that librdkafka only reads during the call. The returned
        // handle is a new reference, released in `drop`.
        let raw =
            unsafe { rdsys::rd_kafka_queue_get_partition(consumer.client().native_ptr(), topic.as_ptr(), partition) };
        NonNull::new(raw).map(|queue| BatchQueue {
            queue,
            slots: Vec::new(),
            _consumer: Arc::clone(consumer),
        })
    }

    /// Takes up to `max` messages (at least one slot is always asked for) already in the
    /// queue, without waiting, and appends each to `out` with its payload copied; returns how
    /// many were taken (0: the queue is empty). Every message taken is released here.
    pub(crate) fn read(&mut self, max: usize, out: &mut Vec<Polled>) -> usize {
        let max = max.max(1);
        self.slots.clear();
        self.slots.reserve(max);
        // SAFETY: `slots` has room for `max` pointers; librdkafka writes at most `max` of them
        // and returns how many (or -1 on error, when it wrote none). A timeout of 0 never
        // blocks.
        let n = unsafe { rdsys::rd_kafka_consume_batch_queue(self.queue.as_ptr(), 0, self.slots.as_mut_ptr(), max) };
        let Ok(n) = usize::try_from(n) else {
            return 0;
        };
        let n = n.min(max);
        // SAFETY: librdkafka initialised the first `n` slots (above).
        unsafe { self.slots.set_len(n) };
        out.reserve(n);
        for &message in &self.slots {
            // SAFETY: each slot is a valid message that librdkafka handed over and that is
            // destroyed exactly once, right after it is read; its payload is `len` readable
            // bytes (or null) until then.
            let item = unsafe {
                let m = &*message;
                let payload =
                    (!m.payload.is_null()).then(|| std::slice::from_raw_parts(m.payload.cast::<u8>(), m.len).to_vec());
                let item = polled(m.err, m.partition, m.offset, payload);
                rdsys::rd_kafka_message_destroy(message);
                item
            };
            out.push(item);
        }
        self.slots.clear();
        n
    }
}

#[allow(unsafe_code)]
impl<C: ConsumerContext + 'static> Drop for BatchQueue<C> {
    fn drop(&mut self) {
        // SAFETY: the handle came from `rd_kafka_queue_get_partition` and is released once;
        // the client is still alive (`_consumer` is dropped after this).
        unsafe { rdsys::rd_kafka_queue_destroy(self.queue.as_ptr()) };
    }
}

/// A read message, or its error as rdkafka's own poll reports it: the end of a partition as
/// `PartitionEOF`, a fatal consumer error as `MessageConsumptionFatal`, any other as
/// `MessageConsumption`.
fn polled(err: RDKafkaRespErr, partition: i32, offset: i64, payload: Option<Vec<u8>>) -> Polled {
    match err {
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR => Ok((partition, offset, payload)),
        RDKafkaRespErr::RD_KAFKA_RESP_ERR__PARTITION_EOF => Err(KafkaError::PartitionEOF(partition)),
        RDKafkaRespErr::RD_KAFKA_RESP_ERR__FATAL => {
            Err(KafkaError::MessageConsumptionFatal(RDKafkaErrorCode::from(err)))
        }
        _ => Err(KafkaError::MessageConsumption(RDKafkaErrorCode::from(err))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_and_errors_map_as_rdkafkas_poll_reports_them() {
        assert_eq!(
            polled(RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR, 2, 41, Some(b"{}".to_vec())),
            Ok((2, 41, Some(b"{}".to_vec())))
        );
        assert_eq!(
            polled(RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR, 0, 7, None),
            Ok((0, 7, None))
        );
        assert_eq!(
            polled(RDKafkaRespErr::RD_KAFKA_RESP_ERR__PARTITION_EOF, 3, 100, None),
            Err(KafkaError::PartitionEOF(3))
        );
        assert_eq!(
            polled(RDKafkaRespErr::RD_KAFKA_RESP_ERR__FATAL, 1, -1, None),
            Err(KafkaError::MessageConsumptionFatal(RDKafkaErrorCode::Fatal))
        );
        assert_eq!(
            polled(
                RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED,
                1,
                -1,
                None
            ),
            Err(KafkaError::MessageConsumption(
                RDKafkaErrorCode::TopicAuthorizationFailed
            ))
        );
    }
}
