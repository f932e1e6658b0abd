//! The protocol state of one MQTT client, kept apart from the socket (as
//! rumqttc keeps its `MqttState` apart from its event loop): who waits for
//! which acknowledgement, which subscriptions hold in the broker's session,
//! and how long to wait before the next connection attempt.
//!
//! Every method is a transition on one event the connection task saw, or on
//! one request of a caller; none does I/O, so each is tested here without a
//! broker. The connection task in `mod.rs` polls rumqttc, calls the
//! transition under the lock callers queue with, and does what it returns:
//! subscribe again, log, count, sleep.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use crate::backoff::Backoff;
use crate::publish::Message;

/// Resolves a publish or subscribe: `Err` carries the reason it failed.
pub(super) type Waiter = oneshot::Sender<Result<(), String>>;

/// A subscription: the receivers of one topic filter and whether the broker
/// confirmed it in the current session.
struct Subscription {
    senders: Vec<mpsc::Sender<Message>>,
    confirmed: bool,
    requested: bool,
    waiters: Vec<Waiter>,
}

/// State shared by callers and the connection task, under one lock so that
/// the order of queued requests and of their waiters always agree.
pub(super) struct ClientState {
    pub(super) connected: bool,
    pub(super) last_error: Option<String>,
    /// Publishes queued to rumqttc, waiting for their packet id.
    queued: VecDeque<Waiter>,
    /// Publishes sent, waiting for their PUBACK.
    inflight: HashMap<u16, Waiter>,
    /// Subscribes queued to rumqttc (by filter), waiting for their packet id.
    queued_subscribes: VecDeque<String>,
    /// Subscribes sent, waiting for their SUBACK.
    inflight_subscribes: HashMap<u16, String>,
    subscriptions: HashMap<String, Subscription>,
    /// The delay before the next connection attempt.
    backoff: Backoff,
    /// When the current session came up (its CONNACK).
    up_since: Option<Instant>,
}

/// What a CONNACK asks of the connection task.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Connected {
    /// Filters to subscribe to (again); each is already marked requested.
    pub(super) subscribe: Vec<String>,
    /// The broker kept no session: every subscription was lost.
    pub(super) fresh_session: bool,
}

/// What a subscriber asked for.
pub(super) enum Subscribed {
    /// The broker already confirmed the filter in this session.
    Confirmed,
    /// Wait for the SUBACK; `request` says whether to send a SUBSCRIBE now
    /// (connected, and none is on its way).
    Pending {
        waiter: oneshot::Receiver<Result<(), String>>,
        request: bool,
    },
}

impl ClientState {
    pub(super) fn new() -> ClientState {
        ClientState {
            connected: false,
            last_error: None,
            queued: VecDeque::new(),
            inflight: HashMap::new(),
            queued_subscribes: VecDeque::new(),
            inflight_subscribes: HashMap::new(),
            subscriptions: HashMap::new(),
            backoff: Backoff::new(Duration::from_secs(1), Duration::from_secs(60)),
            up_since: None,
        }
    }

    // ------------------------------------------------------ callers' requests

    /// A publish was queued to rumqttc; its waiter gets the packet id next.
    pub(super) fn publish_queued(&mut self, waiter: Waiter) {
        self.queued.push_back(waiter);
    }

    /// A subscriber for `filter`; messages go to `sender`.
    pub(super) fn subscribe(&mut self, filter: &str, sender: mpsc::Sender<Message>) -> Subscribed {
        let connected = self.connected;
        let subscription = self
            .subscriptions
            .entry(filter.to_owned())
            .or_insert_with(|| Subscription {
                senders: Vec::new(),
                confirmed: false,
                requested: false,
                waiters: Vec::new(),
            });
        subscription.senders.push(sender);
        if subscription.confirmed {
            return Subscribed::Confirmed;
        }
        let (tx, rx) = oneshot::channel();
        subscription.waiters.push(tx);
        let request = connected && !subscription.requested;
        if request {
            subscription.requested = true;
        }
        Subscribed::Pending {
            waiter: rx,
            request,
        }
    }

    /// A SUBSCRIBE for `filter` was queued to rumqttc.
    pub(super) fn subscribe_queued(&mut self, filter: &str) {
        self.queued_subscribes.push_back(filter.to_owned());
    }

    // ---------------------------------------------- what the connection saw

    /// CONNACK at `now`: the session is up. The backoff does not start over
    /// yet: a broker that accepts and then drops us at once (a second device
    /// with our client id, a policy refusing a topic) would otherwise get a
    /// CONNECT per second forever; [`ClientState::connection_lost`] decides.
    pub(super) fn connected(&mut self, session_present: bool, now: Instant) -> Connected {
        self.up_since = Some(now);
        self.connected = true;
        self.last_error = None;
        let mut subscribe = Vec::new();
        for (filter, subscription) in self.subscriptions.iter_mut() {
            // A fresh session lost every subscription on the broker.
            if !session_present {
                subscription.confirmed = false;
            }
            if !subscription.confirmed && !subscription.requested {
                subscription.requested = true;
                subscribe.push(filter.clone());
            }
        }
        Connected {
            subscribe,
            fresh_session: !session_present,
        }
    }

    /// rumqttc sent a PUBLISH with `pkid`: the oldest queued publish.
    pub(super) fn publish_sent(&mut self, pkid: u16) {
        if let Some(waiter) = self.queued.pop_front() {
            self.inflight.insert(pkid, waiter);
        }
    }

    /// PUBACK: the publish resolves. Returns whether one waited for it.
    pub(super) fn publish_acknowledged(&mut self, pkid: u16) -> bool {
        match self.inflight.remove(&pkid) {
            Some(waiter) => {
                let _ = waiter.send(Ok(()));
                true
            }
            None => false,
        }
    }

    /// rumqttc sent a SUBSCRIBE with `pkid`: the oldest queued subscribe.
    pub(super) fn subscribe_sent(&mut self, pkid: u16) {
        if let Some(filter) = self.queued_subscribes.pop_front() {
            self.inflight_subscribes.insert(pkid, filter);
        }
    }

    /// SUBACK: the subscription holds, or the broker refused it. Returns the
    /// filter it answered, if any waited.
    pub(super) fn subscribe_acknowledged(&mut self, pkid: u16, refused: bool) -> Option<String> {
        let filter = self.inflight_subscribes.remove(&pkid)?;
        let subscription = self.subscriptions.get_mut(&filter)?;
        subscription.requested = false;
        subscription.confirmed = !refused;
        let result = match refused {
            true => Err(format!("subscription to {filter} refused")),
            false => Ok(()),
        };
        for waiter in subscription.waiters.drain(..) {
            let _ = waiter.send(result.clone());
        }
        Some(filter)
    }

    /// An incoming PUBLISH, handed to every subscriber of a matching filter.
    /// Returns how many subscribers could not take it (their channel full).
    pub(super) fn received(&mut self, message: &Message) -> usize {
        let mut dropped = 0;
        for (filter, subscription) in self.subscriptions.iter_mut() {
            if !topic_matches(&message.topic, filter) {
                continue;
            }
            subscription.senders.retain(|tx| !tx.is_closed());
            for tx in &subscription.senders {
                if tx.try_send(message.clone()).is_err() {
                    dropped += 1;
                }
            }
        }
        dropped
    }

    /// Our own DISCONNECT went out, or the transport shut down: everything
    /// waiting fails.
    pub(super) fn stopped(&mut self) {
        self.connected = false;
        self.fail_all("transport shut down");
    }

    /// The connection failed or broke at `now`. Everything waiting fails (the
    /// outbox above owns retries); returns whether a session was up, and how
    /// long to wait before the next attempt: the backoff starts over only if
    /// the session stayed up [`crate::backoff::STABLE_AFTER`].
    pub(super) fn connection_lost(
        &mut self,
        peer: &str,
        reason: &str,
        now: Instant,
    ) -> (bool, Duration) {
        let was_connected = self.connected;
        self.connected = false;
        if let Some(since) = self.up_since.take() {
            self.backoff
                .connection_lost_after(now.saturating_duration_since(since));
        }
        self.last_error = Some(format!("{peer}: {reason}"));
        self.fail_all(&format!("connection to {peer} lost: {reason}"));
        (was_connected, self.backoff.next_delay())
    }

    /// Fails every publish waiting for an id or an ack, and forgets queued
    /// subscribes; subscription waiters keep waiting for the next session.
    pub(super) fn fail_all(&mut self, reason: &str) {
        for tx in self.queued.drain(..) {
            let _ = tx.send(Err(reason.to_owned()));
        }
        for (_, tx) in self.inflight.drain() {
            let _ = tx.send(Err(reason.to_owned()));
        }
        self.queued_subscribes.clear();
        self.inflight_subscribes.clear();
        for subscription in self.subscriptions.values_mut() {
            subscription.requested = false;
        }
    }
}

/// MQTT 3.1.1 §4.7: `+` and `#` match single and trailing levels, but a
/// filter starting with a wildcard never matches a `$` topic. (rumqttc's own
/// `matches` refuses every `$` topic, which would lose all `$aws/...` replies.)
pub(super) fn topic_matches(topic: &str, filter: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut levels = topic.split('/');
    for f in filter.split('/') {
        if f == "#" {
            return true;
        }
        match levels.next() {
            Some(t) if f == "+" || f == t => {}
            _ => return false,
        }
    }
    levels.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiter() -> (Waiter, oneshot::Receiver<Result<(), String>>) {
        oneshot::channel()
    }

    fn message(topic: &str) -> Message {
        Message {
            topic: topic.to_owned(),
            payload: b"x".to_vec(),
        }
    }

    /// A connected client with two publishes queued; returns their
    /// receivers, in queue order.
    fn two_queued() -> (ClientState, [oneshot::Receiver<Result<(), String>>; 2]) {
        let mut state = ClientState::new();
        state.connected(true, Instant::now());
        let (first, first_rx) = waiter();
        let (second, second_rx) = waiter();
        state.publish_queued(first);
        state.publish_queued(second);
        (state, [first_rx, second_rx])
    }

    #[test]
    fn publishes_resolve_on_their_own_puback_in_queue_order() {
        let (mut state, [mut first_rx, mut second_rx]) = two_queued();
        state.publish_sent(7);
        state.publish_sent(8);
        assert!(state.publish_acknowledged(8));
        assert_eq!(second_rx.try_recv(), Ok(Ok(())));
        assert!(first_rx.try_recv().is_err(), "7 is not acknowledged yet");
        assert!(!state.publish_acknowledged(9), "nobody waits for 9");
        assert!(state.publish_acknowledged(7));
        assert_eq!(first_rx.try_recv(), Ok(Ok(())));
    }

    #[test]
    fn a_lost_connection_fails_every_waiting_publish_and_backs_off() {
        let (mut state, [mut sent_rx, mut queued_rx]) = two_queued();
        state.publish_sent(1);
        let now = Instant::now();
        let (was_connected, first) = state.connection_lost("MQTT broker b:8883", "reset", now);
        assert!(was_connected);
        assert!(!state.connected);
        assert_eq!(
            state.last_error.as_deref(),
            Some("MQTT broker b:8883: reset")
        );
        for rx in [&mut queued_rx, &mut sent_rx] {
            let reason = rx.try_recv().expect("resolved").expect_err("failed");
            assert!(reason.contains("lost: reset"), "{reason}");
        }
        let (was_connected, second) = state.connection_lost("MQTT broker b:8883", "refused", now);
        assert!(!was_connected);
        assert!(second > first, "{first:?} then {second:?}");
    }

    #[test]
    fn only_a_session_that_stayed_up_starts_the_backoff_over() {
        let mut state = ClientState::new();
        let start = Instant::now();
        let mut delays = Vec::new();
        // A broker that accepts and drops us at once (a clone with our
        // client id): every CONNACK is followed by a loss 100 ms later.
        for n in 0..5u64 {
            let at = start + Duration::from_secs(n * 100);
            state.connected(true, at);
            let lost = at + Duration::from_millis(100);
            delays.push(state.connection_lost("b", "kicked", lost).1);
        }
        assert!(
            delays[4] >= Duration::from_secs(12),
            "short sessions keep backing off: {delays:?}"
        );
        let at = start + Duration::from_secs(1000);
        state.connected(true, at);
        let (_, after_stable) =
            state.connection_lost("b", "reset", at + crate::backoff::STABLE_AFTER);
        assert!(
            after_stable <= Duration::from_millis(1250),
            "a session up for a minute starts over: {after_stable:?}"
        );
    }

    #[test]
    fn subscriptions_wait_for_their_suback_and_are_made_again_after_a_fresh_session() {
        let mut state = ClientState::new();
        let (tx, mut rx) = mpsc::channel(4);
        let Subscribed::Pending {
            waiter: mut suback,
            request,
        } = state.subscribe("a/+", tx)
        else {
            panic!("not confirmed yet");
        };
        assert!(!request, "not connected: nothing is sent yet");
        let connected = state.connected(false, Instant::now());
        assert_eq!(connected.subscribe, ["a/+"]);
        state.subscribe_queued("a/+");
        state.subscribe_sent(3);
        assert_eq!(
            state.subscribe_acknowledged(3, false),
            Some("a/+".to_owned())
        );
        assert_eq!(suback.try_recv(), Ok(Ok(())));
        assert_eq!(state.received(&message("a/b")), 0);
        assert_eq!(rx.try_recv().map(|m| m.topic), Ok("a/b".to_owned()));

        let kept = state.connected(true, Instant::now());
        assert!(kept.subscribe.is_empty(), "the broker kept the session");
        let fresh = state.connected(false, Instant::now());
        assert!(fresh.fresh_session);
        assert_eq!(fresh.subscribe, ["a/+"], "a fresh session lost it");
    }

    #[test]
    fn a_refused_subscription_fails_its_waiters() {
        let mut state = ClientState::new();
        state.connected(true, Instant::now());
        let (tx, _rx) = mpsc::channel(1);
        let Subscribed::Pending { waiter, request } = state.subscribe("$aws/#", tx) else {
            panic!("not confirmed yet");
        };
        assert!(request);
        state.subscribe_queued("$aws/#");
        state.subscribe_sent(1);
        state.subscribe_acknowledged(1, true);
        let mut waiter = waiter;
        let reason = waiter.try_recv().expect("resolved").expect_err("refused");
        assert!(reason.contains("$aws/#"), "{reason}");
    }

    #[test]
    fn a_subscriber_that_does_not_keep_up_loses_messages_counted() {
        let mut state = ClientState::new();
        let (tx, _rx) = mpsc::channel(1);
        let _ = state.subscribe("t", tx);
        assert_eq!(state.received(&message("t")), 0);
        assert_eq!(state.received(&message("t")), 1);
        assert_eq!(state.received(&message("other")), 0);
    }

    #[test]
    fn topic_filters_match_like_the_broker() {
        let cases = [
            (
                "$aws/things/t/defender/metrics/json/accepted",
                "$aws/things/t/defender/metrics/json/accepted",
                true,
            ),
            (
                "$aws/things/t/defender/metrics/json/accepted",
                "$aws/things/+/defender/metrics/json/+",
                true,
            ),
            (
                "$aws/things/t/defender/metrics/json/accepted",
                "$aws/#",
                true,
            ),
            ("$aws/things/t/defender/metrics/json/accepted", "#", false),
            (
                "$aws/things/t/defender/metrics/json/accepted",
                "+/things/#",
                false,
            ),
            (
                "$aws/things/t/defender/metrics/json",
                "$aws/things/t/defender/metrics/json/accepted",
                false,
            ),
            ("a/b/c", "a/+", false),
            ("a/b", "a/b/#", true),
            ("a/b", "a/+", true),
        ];
        for (topic, filter, expected) in cases {
            assert_eq!(
                topic_matches(topic, filter),
                expected,
                "{topic} vs {filter}"
            );
        }
    }
}
