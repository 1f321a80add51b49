//! Consumer lag per partition (`prescale_consumer_lag`): the high watermark
//! librdkafka last saw in a fetch minus the consumer's position. Both are
//! local reads (no broker round trip), so the loop can call this on its
//! timer.

use super::client::cached_watermarks;
use rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};
use rdkafka::topic_partition_list::Offset;

/// Set the lag gauge of every partition `consumer` is assigned. A partition
/// not read yet counts everything the broker holds (high − low).
pub fn report<C: ConsumerContext + 'static>(
    consumer: &StreamConsumer<C>,
    metrics: &crate::telemetry::Metrics,
) {
    let Ok(pos) = consumer.position() else {
        return;
    };
    for e in pos.elements() {
        let Some((low, high)) = cached_watermarks(consumer.client(), e.topic(), e.partition())
        else {
            continue;
        };
        let lag = match e.offset() {
            Offset::Offset(o) => high - o,
            _ => high - low.max(0),
        };
        metrics.set_consumer_lag(e.topic(), e.partition(), lag.max(0));
    }
}
