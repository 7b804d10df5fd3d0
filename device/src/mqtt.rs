//! The MQTT edge: one rumqttc connection to the home's broker, kept alive by a task that
//! retries with exponential backoff, and the loop that carries out an [`Executor`]'s timeline
//! against the wall clock — reconciling the current state each time the broker comes back.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Outgoing, Packet, QoS};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use protocol::net::now_ms;

use crate::actuation::{Executor, Publish};
use crate::feedback::{Event as FeedbackEvent, Feedback};

/// The broker (`[mqtt]` in `gateway.toml`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttFile {
    /// Host name or address.
    pub host: String,
    /// TCP port.
    #[serde(default = "default_port")]
    pub port: u16,
    /// MQTT client id (default `gridproof-<first appliance>`).
    #[serde(default)]
    pub client_id: Option<String>,
    /// User name, if the broker wants one.
    #[serde(default)]
    pub username: Option<String>,
    /// File holding the password (relative to `gateway.toml`); never logged.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Keep-alive interval, s.
    #[serde(default = "default_keep_alive")]
    pub keep_alive_s: u64,
}

fn default_port() -> u16 {
    1883
}
fn default_keep_alive() -> u64 {
    15
}

/// What went wrong with the broker.
#[derive(Debug, Error)]
pub enum MqttError {
    /// The first connection failed or did not complete in time.
    #[error("MQTT broker {host}:{port} unreachable: {reason}")]
    Unreachable {
        /// Host.
        host: String,
        /// Port.
        port: u16,
        /// Why.
        reason: String,
    },
    /// The password file could not be read.
    #[error("mqtt.password_file {path}: {source}")]
    Password {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// The link as the keeper task sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Link {
    /// Not connected yet.
    Connecting,
    /// Connected; the number counts connections (a new one means: reconcile).
    Up(u64),
    /// Lost; the reason of the last failure. The task is retrying.
    Down(String),
}

/// What [`execute`] publishes on every (re)connection, around the reconciled state.
#[derive(Debug, Clone, Default)]
pub struct OnConnect {
    /// Before the state (discovery configs, retained attributes).
    pub before: Vec<Publish>,
    /// After it (availability).
    pub after: Vec<Publish>,
}

/// A message on a subscribed topic.
struct Incoming {
    topic: String,
    payload: Vec<u8>,
    /// Delivered from the broker's retained store at subscription time.
    retained: bool,
}

/// A handle that queues publications on a [`Broker`]'s connection from another task
/// (cheap to clone; counted in the broker's [`Broker::flush`]).
#[derive(Clone)]
pub struct Publisher {
    client: AsyncClient,
    /// Publications queued so far (shared with the broker).
    queued: std::sync::Arc<AtomicU64>,
    addr: String,
}

impl Publisher {
    /// Queues one publication (QoS 1) without waiting; false if the queue is full.
    pub fn publish(&self, p: &Publish) -> bool {
        match self.client.try_publish(p.topic.clone(), QoS::AtLeastOnce, p.retain, p.payload.clone().into_bytes()) {
            Ok(()) => {
                self.queued.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(e) => {
                warn!(broker = self.addr, topic = p.topic, "publication dropped: {e}");
                false
            }
        }
    }
}

/// A live broker connection.
pub struct Broker {
    client: AsyncClient,
    publisher: Publisher,
    link: watch::Receiver<Link>,
    /// PubAcks received so far.
    acked: watch::Receiver<u64>,
    addr: String,
    /// Messages on the topics subscribed to ([`Broker::subscribe`]), newest dropped when full.
    incoming: tokio::sync::mpsc::Receiver<Incoming>,
}

/// The connection options of `file` for `client_id` (keep-alive, credentials).
fn options(file: &MqttFile, client_id: &str) -> Result<MqttOptions, MqttError> {
    let mut opts = MqttOptions::new(client_id, &file.host, file.port);
    opts.set_keep_alive(Duration::from_secs(file.keep_alive_s.max(5)));
    if let Some(user) = &file.username {
        let password = match &file.password_file {
            Some(path) => std::fs::read_to_string(path).map_err(|source| MqttError::Password { path: path.clone(), source })?.trim().to_string(),
            None => String::new(),
        };
        opts.set_credentials(user, password);
    }
    Ok(opts)
}

/// Subscribes to `topics` on the broker with its own connection (client id `client_id`),
/// again after every reconnection (the one backoff), and forwards each message (topic,
/// payload, arrival time in ms) to the returned channel; messages beyond its 1,024 waiting are dropped (counted
/// in a debug log). The task ends when the receiver is dropped.
pub fn subscribe(file: &MqttFile, client_id: &str, topics: Vec<String>) -> Result<tokio::sync::mpsc::Receiver<(String, Vec<u8>, u64)>, MqttError> {
    let (client, mut events) = AsyncClient::new(options(file, client_id)?, 64);
    let (tx, rx) = tokio::sync::mpsc::channel(1024);
    let addr = format!("{}:{}", file.host, file.port);
    tokio::spawn(async move {
        let mut backoff = protocol::backoff::Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
        let mut dropped = 0u64;
        loop {
            if tx.is_closed() {
                return;
            }
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    backoff.reset();
                    for t in &topics {
                        if let Err(e) = client.subscribe(t.clone(), QoS::AtMostOnce).await {
                            warn!(broker = addr, topic = t, "subscribing to a meter topic failed: {e}");
                        }
                    }
                    info!(broker = addr, topics = topics.len(), "subscribed to the meter topics");
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if tx.try_send((p.topic.clone(), p.payload.to_vec(), now_ms())).is_err() {
                        dropped += 1;
                        debug!(broker = addr, dropped, "meter message dropped: the gateway is behind");
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    debug!(broker = addr, "meter subscription: {e}; retrying with backoff");
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        }
    });
    Ok(rx)
}

/// Bounds of the retry backoff.
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

impl Broker {
    /// Connects (waiting at most `within` for the first connection) and keeps the connection
    /// alive from then on. `will` is published by the broker if the gateway vanishes.
    pub async fn connect(file: &MqttFile, client_id: &str, will: Option<Publish>, within: Duration) -> Result<Broker, MqttError> {
        let mut opts = options(file, client_id)?;
        if let Some(w) = will {
            opts.set_last_will(LastWill::new(w.topic, w.payload, QoS::AtLeastOnce, w.retain));
        }
        let (client, mut events) = AsyncClient::new(opts, 1024);
        let (link_tx, mut link) = watch::channel(Link::Connecting);
        let (acked_tx, acked) = watch::channel(0u64);
        let (incoming_tx, incoming) = tokio::sync::mpsc::channel(256);
        let addr = format!("{}:{}", file.host, file.port);
        let task_addr = addr.clone();
        tokio::spawn(async move {
            let mut connections = 0u64;
            let mut backoff = protocol::backoff::Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
            let mut acks = 0u64;
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        connections += 1;
                        backoff.reset();
                        if connections > 1 {
                            info!(broker = task_addr, "MQTT broker connection restored");
                        }
                        let _ = link_tx.send(Link::Up(connections));
                    }
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        acks += 1;
                        let _ = acked_tx.send(acks);
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if incoming_tx.try_send(Incoming { topic: p.topic.clone(), payload: p.payload.to_vec(), retained: p.retain }).is_err() {
                            debug!(broker = task_addr, topic = p.topic, "device message dropped: the gateway is behind");
                        }
                    }
                    Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                        let _ = link_tx.send(Link::Down("disconnected".into()));
                        return;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        if link_tx.is_closed() {
                            return;
                        }
                        if matches!(*link_tx.borrow(), Link::Up(_)) {
                            warn!(broker = task_addr, "MQTT broker connection lost: {e}; retrying with backoff");
                        } else {
                            debug!(broker = task_addr, "MQTT connect failed: {e}; retrying with backoff");
                        }
                        let _ = link_tx.send(Link::Down(e.to_string()));
                        tokio::time::sleep(backoff.next_delay()).await;
                    }
                }
            }
        });
        let first = tokio::time::timeout(within, async {
            loop {
                match &*link.borrow_and_update() {
                    Link::Up(_) => return Ok(()),
                    Link::Down(reason) => return Err(reason.clone()),
                    Link::Connecting => {}
                }
                if link.changed().await.is_err() {
                    return Err("connection task ended".to_string());
                }
            }
        })
        .await;
        let unreachable = |reason: String| MqttError::Unreachable { host: file.host.clone(), port: file.port, reason };
        match first {
            Ok(Ok(())) => {
                info!(broker = addr, "connected to the MQTT broker");
                let publisher = Publisher { client: client.clone(), queued: Default::default(), addr: addr.clone() };
                Ok(Broker { client, publisher, link, acked, addr, incoming })
            }
            Ok(Err(reason)) => Err(unreachable(reason)),
            Err(_) => Err(unreachable(format!("no answer within {within:?}"))),
        }
    }

    /// The broker's address.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The link's current state.
    pub fn link(&self) -> Link {
        self.link.borrow().clone()
    }

    /// Queues one publication (QoS 1) without waiting; false if the queue is full.
    pub fn publish(&self, p: &Publish) -> bool {
        self.publisher.publish(p)
    }

    /// A handle that publishes on this connection from elsewhere.
    pub fn publisher(&self) -> Publisher {
        self.publisher.clone()
    }

    /// Subscribes to `topics` (QoS 1) on the current connection; their messages arrive in
    /// [`execute`]. Call again after a reconnect (the session is not persistent).
    pub fn subscribe(&self, topics: &[String]) {
        for t in topics {
            if let Err(e) = self.client.try_subscribe(t.clone(), QoS::AtLeastOnce) {
                warn!(broker = self.addr, topic = t, "subscribing failed: {e}");
            }
        }
    }

    /// Waits (at most `within`) until the broker acknowledged as many publications as were
    /// queued.
    pub async fn flush(&mut self, within: Duration) -> bool {
        let queued = self.publisher.queued.load(Ordering::Relaxed);
        tokio::time::timeout(within, async {
            loop {
                if *self.acked.borrow_and_update() >= queued {
                    return;
                }
                if self.acked.changed().await.is_err() {
                    return;
                }
            }
        })
        .await
        .is_ok()
    }

    /// Publishes `last` (e.g. availability "offline"), waits for the acknowledgements, and
    /// disconnects cleanly.
    pub async fn close(mut self, last: Option<Publish>) {
        if let Some(p) = last {
            self.publish(&p);
        }
        self.flush(Duration::from_secs(5)).await;
        let _ = self.client.disconnect().await;
    }
}

/// Carries out `executor` until its timeline is done. On every (re)connection it publishes
/// `on_connect.before` (discovery), the current state, then `on_connect.after` (availability:
/// Home Assistant sees the entities online only once they hold the current state); otherwise each publication
/// at its time. Commands that fall due while the broker is away are not queued: the state
/// they lead to is reconciled when it returns. `progress(done_until_ms)` is called after each
/// step so the host can persist how far execution got. It follows `feedback`'s topics: a relay
/// back online gets its current state again, a Shelly's refusal is logged.
pub async fn execute(broker: &mut Broker, executor: &mut Executor, on_connect: &OnConnect, feedback: &mut Feedback, mut progress: impl FnMut(u64)) {
    let mut seen = 0u64;
    // Messages left from an earlier schedule's devices are not this one's.
    while broker.incoming.try_recv().is_ok() {}
    while !executor.is_done() {
        let link = broker.link();
        let now = now_ms();
        match link {
            Link::Up(n) if n != seen => {
                seen = n;
                for p in &on_connect.before {
                    broker.publish(p);
                }
                broker.subscribe(&feedback.topics());
                let state = executor.reconcile(now);
                if !state.is_empty() {
                    info!(broker = broker.addr(), publications = state.len(), "reconciled the current state");
                }
                for t in state.iter().filter(|t| feedback.allows(t)) {
                    broker.publish(&t.publish);
                }
                for p in on_connect.after.iter().chain(&feedback.control_states()) {
                    broker.publish(p);
                }
                progress(now);
                continue;
            }
            _ => {}
        }
        let Some(at) = executor.next_at() else { break };
        if at > now {
            let sleep = tokio::time::sleep(Duration::from_millis(at - now));
            tokio::pin!(sleep);
            tokio::select! {
                _ = &mut sleep => {}
                changed = broker.link.changed() => {
                    if changed.is_err() {
                        // The connection task is gone; keep time without it.
                        sleep.await;
                    }
                }
                Some(message) = broker.incoming.recv() => {
                    device_message(broker, executor, feedback, &message);
                }
            }
            continue;
        }
        let due = executor.due(now);
        if matches!(link, Link::Up(_)) {
            for t in due.iter().filter(|t| feedback.allows(t)) {
                debug!(slot = t.slot, topic = t.publish.topic, payload = t.publish.payload, "publish");
                broker.publish(&t.publish);
            }
            if let Some(t) = due.iter().map(|t| t.slot).max() {
                info!(slot = t, publications = due.len(), "slot commands published");
            }
        } else {
            warn!(broker = broker.addr(), held = due.len(), "broker away: commands held for reconciliation");
        }
        progress(now);
    }
}

/// Acts on one message from a device while a schedule executes.
fn device_message(broker: &Broker, executor: &Executor, feedback: &mut Feedback, m: &Incoming) {
    match feedback.handle(&m.topic, &m.payload, m.retained, executor) {
        FeedbackEvent::Resend { topic, state } => {
            let state: Vec<_> = state.into_iter().filter(|t| feedback.allows(t)).collect();
            info!(device = topic, publications = state.len(), "device back online: its current state sent again");
            for t in &state {
                broker.publish(&t.publish);
            }
        }
        FeedbackEvent::Control { appliance, paused, publish } => {
            if paused {
                warn!(appliance, "gridproof control paused from Home Assistant: its output gets no commands until the control switch is on again (the schedule still counts for settlement)");
            } else {
                info!(appliance, publications = publish.len(), "gridproof control resumed from Home Assistant: the current state sent");
            }
            for p in &publish {
                broker.publish(p);
            }
        }
        FeedbackEvent::ShellyError { device, id, code, message } => {
            feedback.shelly_errors += 1;
            warn!(device, request = id, code, errors = feedback.shelly_errors, "Shelly refused a command: {message}");
        }
        FeedbackEvent::Nothing => {}
    }
}
