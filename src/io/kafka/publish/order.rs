//! Keeping a producer's messages in their order across failed deliveries.
//!
//! librdkafka keeps a partition's order itself while it retries, but a
//! message it gives up on (a broker answering `UNKNOWN` while it stops, a
//! message timeout) comes back to the application, and the messages queued
//! behind it stay queued. Sending the failed one again would put it after
//! them. [`ResendOrder`] is the bookkeeping that avoids that, apart from the
//! client so it can be tested alone: every message gets a sequence number
//! when it is accepted; after a failure, new messages are held back; once
//! the client holds nothing any more (the publisher purges its queues, and
//! what was in flight has been answered), everything that came back and
//! everything held is sent again, in sequence order, before anything newer.
//! Re-sent messages precede new ones, so with one request in flight per
//! connection (or an idempotent producer) every partition keeps its order.
//!
//! One case cannot be repaired without idempotence: a batch that was already
//! in flight behind a failed one and then succeeded. The broker wrote it
//! before the failed batch's re-send. Such deliveries are counted
//! ([`ResendOrder::reordered`]) so they are never silent.

use std::collections::BTreeMap;

/// A topic partition as librdkafka reported it.
pub type Part = (String, i32);

/// What to do with a message just accepted.
#[derive(Debug, PartialEq, Eq)]
pub enum Admission<M> {
    /// Hand it to the client now, with this sequence number as its opaque;
    /// call [`ResendOrder::handed`] once the client has it.
    Send(u64, M),
    /// Kept back behind earlier failed messages; it goes out with the next
    /// [`ResendOrder::take_resend`] batch.
    Held,
}

/// The answer of [`ResendOrder::take_resend`].
#[derive(Debug, PartialEq, Eq)]
pub enum Resend<M> {
    /// Nothing to re-send; new messages flow straight to the client.
    Flowing,
    /// The client still holds messages that a failure may send back (purge
    /// its queues and ask again later): sending now could overtake them.
    Wait,
    /// Hand these to the client now, in this order, before anything else.
    Batch(Vec<(u64, M)>),
}

/// Sequence numbers, failed and held messages. `M` is whatever the caller
/// needs to send a message again.
#[derive(Debug)]
pub struct ResendOrder<M> {
    next_seq: u64,
    /// Messages the client gave back (failed or purged), by sequence.
    returned: BTreeMap<u64, (Part, M)>,
    /// Messages accepted while holding, by sequence.
    held: BTreeMap<u64, M>,
    /// Holding back new messages until a re-send has gone out.
    holding: bool,
    /// A delivery failed since the last re-send batch was taken: the client
    /// must be emptied before anything is sent again.
    dirty: bool,
    /// Admitted to send, not yet in the client's hands.
    handing: usize,
    /// Deliveries written after a failed earlier message of their partition.
    reordered: u64,
}

impl<M> Default for ResendOrder<M> {
    fn default() -> Self {
        ResendOrder {
            next_seq: 0,
            returned: BTreeMap::new(),
            held: BTreeMap::new(),
            holding: false,
            dirty: false,
            handing: 0,
            reordered: 0,
        }
    }
}

impl<M> ResendOrder<M> {
    /// Accept a new message: send it now, or hold it behind failed ones.
    pub fn admit(&mut self, m: M) -> Admission<M> {
        let seq = self.next_seq;
        self.next_seq += 1;
        if self.holding {
            self.held.insert(seq, m);
            Admission::Held
        } else {
            self.handing += 1;
            Admission::Send(seq, m)
        }
    }

    /// The client has the message admitted with [`Admission::Send`] (or
    /// refused it; either way it is no longer on its way).
    pub fn handed(&mut self) {
        self.handing = self.handing.saturating_sub(1);
    }

    /// A delivery report said written. Returns true when an earlier message
    /// of the same partition has failed and not been written yet: the
    /// partition's order is broken (counted).
    pub fn delivered(&mut self, seq: u64, part: &Part) -> bool {
        let broken = self.returned.range(..seq).any(|(_, (p, _))| p == part);
        if broken {
            self.reordered += 1;
        }
        broken
    }

    /// A delivery report gave the message back. `purged`: because the
    /// publisher purged the client's queue (nothing failed there).
    pub fn failed(&mut self, seq: u64, part: Part, m: M, purged: bool) {
        self.returned.insert(seq, (part, m));
        self.holding = true;
        if !purged {
            self.dirty = true;
        }
    }

    /// Whether the client's queues should be purged now: a failure came
    /// back and messages behind it may still be queued there.
    pub fn needs_drain(&self) -> bool {
        self.dirty
    }

    /// The next step once the caller knows whether the client is empty
    /// (nothing queued, in flight or awaiting its delivery report).
    pub fn take_resend(&mut self, client_empty: bool) -> Resend<M> {
        if !self.holding {
            return Resend::Flowing;
        }
        if self.dirty && (!client_empty || self.handing > 0) {
            return Resend::Wait;
        }
        self.dirty = false;
        let mut batch: Vec<(u64, M)> = std::mem::take(&mut self.returned)
            .into_iter()
            .map(|(s, (_, m))| (s, m))
            .collect();
        batch.extend(std::mem::take(&mut self.held));
        if batch.is_empty() {
            self.holding = false;
            return Resend::Flowing;
        }
        batch.sort_unstable_by_key(|(s, _)| *s);
        Resend::Batch(batch)
    }

    /// Messages given back or held, not yet sent again.
    pub fn pending(&self) -> usize {
        self.returned.len() + self.held.len()
    }

    /// Whether new messages are being held back.
    pub fn holding(&self) -> bool {
        self.holding
    }

    /// Deliveries that overtook an earlier failed message of their
    /// partition (see the module's doc).
    pub fn reordered(&self) -> u64 {
        self.reordered
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::VecDeque;

    fn p(n: i32) -> Part {
        ("t".to_string(), n)
    }

    fn sent(a: Admission<&'static str>) -> (u64, &'static str) {
        match a {
            Admission::Send(s, m) => (s, m),
            Admission::Held => panic!("held"),
        }
    }

    #[test]
    fn flows_until_a_failure_then_holds_and_resends_in_order() {
        let mut o = ResendOrder::default();
        let (a, _) = sent(o.admit("a"));
        o.handed();
        let (b, _) = sent(o.admit("b"));
        o.handed();
        assert_eq!(o.take_resend(false), Resend::Flowing);
        // "a" fails; "b" is still in the client.
        o.failed(a, p(0), "a", false);
        assert!(o.needs_drain());
        assert_eq!(o.admit("c"), Admission::Held);
        assert_eq!(o.take_resend(false), Resend::Wait);
        // The purge gives "b" back.
        o.failed(b, p(0), "b", true);
        assert_eq!(o.admit("d"), Admission::Held);
        assert_eq!(
            o.take_resend(true),
            Resend::Batch(vec![(0, "a"), (1, "b"), (2, "c"), (3, "d")])
        );
        assert!(!o.needs_drain());
        // Held while the batch goes out, then sent after it.
        assert_eq!(o.admit("e"), Admission::Held);
        assert_eq!(o.take_resend(false), Resend::Batch(vec![(4, "e")]));
        assert_eq!(o.take_resend(false), Resend::Flowing);
        assert!(!o.holding());
        assert_eq!(sent(o.admit("f")), (5, "f"));
        assert_eq!(o.reordered(), 0);
    }

    #[test]
    fn a_failure_of_a_resent_message_needs_another_drain() {
        let mut o = ResendOrder::default();
        let (a, _) = sent(o.admit("a"));
        o.handed();
        o.failed(a, p(0), "a", false);
        assert_eq!(o.take_resend(true), Resend::Batch(vec![(0, "a")]));
        o.failed(a, p(0), "a", false);
        assert_eq!(o.take_resend(false), Resend::Wait);
        assert_eq!(o.take_resend(true), Resend::Batch(vec![(0, "a")]));
    }

    #[test]
    fn waits_for_a_message_on_its_way_to_the_client() {
        let mut o = ResendOrder::default();
        let (a, _) = sent(o.admit("a"));
        o.handed();
        let _b = sent(o.admit("b")); // admitted, not handed yet
        o.failed(a, p(0), "a", false);
        assert_eq!(o.take_resend(true), Resend::Wait);
        o.handed();
        o.failed(1, p(0), "b", true);
        assert_eq!(o.take_resend(true), Resend::Batch(vec![(0, "a"), (1, "b")]));
    }

    #[test]
    fn a_delivery_overtaking_a_failed_message_is_counted_per_partition() {
        let mut o = ResendOrder::default();
        for m in ["a", "b", "c"] {
            sent(o.admit(m));
            o.handed();
        }
        o.failed(0, p(0), "a", false);
        assert!(!o.delivered(1, &p(1)), "another partition");
        assert!(o.delivered(2, &p(0)), "behind a failed one");
        assert_eq!(o.reordered(), 1);
    }

    /// One step of the simulated client and broker.
    #[derive(Debug, Clone)]
    enum Step {
        /// The application sends a message to partition `n % 3`.
        Send(u8),
        /// The broker answers the oldest request; `fail`: it fails
        /// (`UNKNOWN`), as tansu does while it stops.
        Answer { fail: bool },
        /// The publisher's periodic step (purge when needed, re-send).
        Tick,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            any::<u8>().prop_map(Step::Send),
            any::<bool>().prop_map(|fail| Step::Answer { fail }),
            Just(Step::Tick),
        ]
    }

    /// A client as librdkafka behaves with one request in flight: one FIFO
    /// queue; answers in order; a purge gives back everything queued.
    /// Whatever the failures, every message is written exactly once in the
    /// end, and each partition's log is in send order unless (and only if)
    /// a delivery was counted as having overtaken a failed message.
    fn simulate(steps: &[Step]) {
        let mut o: ResendOrder<(i32, u64)> = ResendOrder::default();
        let mut client: VecDeque<(u64, (i32, u64))> = VecDeque::new();
        let mut logs: BTreeMap<i32, Vec<u64>> = BTreeMap::new();
        let mut sent_n = 0u64;
        let tick = |o: &mut ResendOrder<(i32, u64)>, client: &mut VecDeque<_>| loop {
            if o.needs_drain() {
                for (s, m) in client.drain(..) {
                    let (part, _): (i32, u64) = m;
                    o.failed(s, p(part), m, true);
                }
            }
            match o.take_resend(client.is_empty()) {
                Resend::Batch(b) => client.extend(b),
                _ => break,
            }
        };
        let mut answer = |o: &mut ResendOrder<(i32, u64)>,
                          client: &mut VecDeque<(u64, (i32, u64))>,
                          fail: bool| {
            if let Some((s, m)) = client.pop_front() {
                if fail {
                    o.failed(s, p(m.0), m, false);
                } else {
                    o.delivered(s, &p(m.0));
                    logs.entry(m.0).or_default().push(m.1);
                }
            }
        };
        for st in steps {
            match st {
                Step::Send(n) => {
                    let m = (i32::from(*n % 3), sent_n);
                    sent_n += 1;
                    if let Admission::Send(s, m) = o.admit(m) {
                        client.push_back((s, m));
                        o.handed();
                    }
                }
                Step::Answer { fail } => answer(&mut o, &mut client, *fail),
                Step::Tick => tick(&mut o, &mut client),
            }
        }
        // The broker recovers: tick and answer until everything is written.
        for _ in 0..10_000 {
            tick(&mut o, &mut client);
            if client.is_empty() && o.pending() == 0 {
                break;
            }
            answer(&mut o, &mut client, false);
        }
        assert_eq!(o.pending(), 0);
        let mut all: Vec<u64> = logs.values().flatten().copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..sent_n).collect::<Vec<_>>(), "each once");
        let in_order = logs.values().all(|l| l.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(in_order, o.reordered() == 0, "{logs:?}");
    }

    proptest! {
        #[test]
        fn every_message_is_written_once_and_in_order_unless_counted(
            steps in proptest::collection::vec(step(), 0..200)
        ) {
            simulate(&steps);
        }
    }
}
