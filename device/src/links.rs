//! A gateway's connections to the validators: one per appliance per validator (a validator
//! checks each message against its device's key), dialled again with backoff whenever one is
//! gone (a restarted validator, an idle timeout, a network cut), and requests sent to every
//! validator at once with a deadline each, so that a frozen validator costs one timeout, not
//! an iteration.

use std::time::Duration;

use ed25519_dalek::SigningKey;
use protocol::backoff::Backoff;
use protocol::messages::{DeviceRequest, DeviceResponse};
use protocol::net::ValidatorClient;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::config::Gateway;

/// How long one dial may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest any single request waits for its answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Bounds of the re-dial backoff.
const REDIAL_MIN: Duration = Duration::from_millis(200);
const REDIAL_MAX: Duration = Duration::from_secs(5);

/// A configured validator.
#[derive(Debug, Clone, Copy)]
struct Target {
    index: u16,
    addr: std::net::SocketAddr,
    key: [u8; 32],
}

/// Dials `target` as `key`, waiting at most `within`: the one dial of every connection here.
async fn dial(endpoint: &quinn::Endpoint, target: Target, key: &SigningKey, within: Duration) -> Result<ValidatorClient, String> {
    match tokio::time::timeout(within, ValidatorClient::connect(endpoint, target.addr, target.key, key)).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err(format!("not connected within {within:?}")),
    }
}

/// One connection slot: (validator, appliance).
struct Slot {
    client: Option<ValidatorClient>,
    backoff: Backoff,
    retry_at: Instant,
    /// A dial is under way.
    dialling: bool,
}

/// The validators that answered one request, by outcome.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Validators that accepted it.
    pub accepted: usize,
    /// Validators that refused it, with the refusal label.
    pub refused: Vec<String>,
    /// Validators that could not be reached or did not answer in time.
    pub failed: usize,
}

/// A finished dial: slot and result.
type Dialled = (usize, usize, Result<ValidatorClient, String>);

/// One validator's answer to one request of a [`Round`].
pub struct Answer {
    /// The request's position in the round.
    request: usize,
    /// The validator's position.
    validator: usize,
    /// The appliance that sent it.
    appliance: usize,
    /// What the validator answered, or why there is no answer.
    answer: Result<DeviceResponse, String>,
    /// A connection dialled on the way.
    fresh: Option<ValidatorClient>,
}

/// Requests on their way to every validator ([`Links::start`]).
pub struct Round {
    sends: JoinSet<Answer>,
    /// One per request, in order, counting the answers filed so far.
    pub outcomes: Vec<Outcome>,
}

impl Round {
    /// The next answer to come in; `None` once every answer is in.
    pub async fn next(&mut self) -> Option<Answer> {
        loop {
            match self.sends.join_next().await? {
                Ok(a) => return Some(a),
                Err(_) => continue, // A send task that panicked or was cancelled: no answer.
            }
        }
    }
}

/// Every connection of a gateway.
pub struct Links {
    endpoint: quinn::Endpoint,
    /// The configured validators.
    validators: Vec<Target>,
    /// Appliance keys, by appliance index.
    keys: Vec<SigningKey>,
    /// `slots[v][a]`: validator v (position in `validators`), appliance a.
    slots: Vec<Vec<Slot>>,
    /// Dials under way, in the background: nothing waits for a validator that is down.
    dials: JoinSet<Dialled>,
}

impl Links {
    /// No connection yet; [`Links::dial_all`] makes them.
    pub fn new(gw: &Gateway, endpoint: quinn::Endpoint) -> Links {
        let validators: Vec<Target> = gw.file.validators.iter().map(|v| Target { index: v.index, addr: v.addr, key: gw.validator_keys[v.index as usize] }).collect();
        let keys: Vec<SigningKey> = gw.appliances.iter().map(|a| a.key.clone()).collect();
        let now = Instant::now();
        let slots = validators
            .iter()
            .map(|_| keys.iter().map(|_| Slot { client: None, backoff: Backoff::new(REDIAL_MIN, REDIAL_MAX), retry_at: now, dialling: false }).collect())
            .collect();
        Links { endpoint, validators, keys, slots, dials: JoinSet::new() }
    }

    /// How many validators are configured.
    pub fn validator_count(&self) -> usize {
        self.validators.len()
    }

    /// The address of validator position `v`.
    pub fn addr(&self, v: usize) -> std::net::SocketAddr {
        self.validators[v].addr
    }

    /// The live connection of appliance `a` to validator position `v`, if any.
    fn live(&self, v: usize, a: usize) -> Option<ValidatorClient> {
        self.slots[v][a].client.as_ref().filter(|c| !c.is_closed()).cloned()
    }

    /// Whether validator position `v` has a live connection for appliance 0 (the one
    /// subscriptions use).
    pub fn is_live(&self, v: usize) -> bool {
        self.live(v, 0).is_some()
    }

    /// Starts, in the background, a dial of every connection that is missing or gone, not
    /// being dialled, and whose backoff has passed.
    fn start_dials(&mut self) {
        let now = Instant::now();
        for v in 0..self.validators.len() {
            for a in 0..self.keys.len() {
                let due = !self.slots[v][a].dialling && self.slots[v][a].retry_at <= now;
                if !due || self.live(v, a).is_some() {
                    continue;
                }
                self.slots[v][a].dialling = true;
                let (endpoint, key, target) = (self.endpoint.clone(), self.keys[a].clone(), self.validators[v]);
                self.dials.spawn(async move { (v, a, dial(&endpoint, target, &key, CONNECT_TIMEOUT).await) });
            }
        }
    }

    /// Files a finished dial; a failure doubles that slot's wait.
    fn file(&mut self, (v, a, r): Dialled) {
        let t = self.validators[v];
        let slot = &mut self.slots[v][a];
        slot.dialling = false;
        match r {
            Ok(c) => {
                if slot.client.is_some() && a == 0 {
                    info!(validator = t.index, addr = %t.addr, "reconnected");
                }
                slot.client = Some(c);
                slot.backoff.reset();
            }
            Err(e) => {
                let wait = slot.backoff.next_delay();
                slot.retry_at = Instant::now() + wait;
                if a == 0 {
                    debug!(validator = t.index, addr = %t.addr, "unreachable: {e}; next dial in {wait:?}");
                }
            }
        }
    }

    /// Files the dials that finished, without waiting, and starts the ones that are due.
    pub fn redial(&mut self) {
        while let Some(done) = self.dials.try_join_next() {
            if let Ok(d) = done {
                self.file(d);
            }
        }
        self.start_dials();
    }

    /// Dials every connection and waits for all the dials (at start). Returns how many
    /// validators have at least one live connection.
    pub async fn dial_all(&mut self) -> usize {
        self.start_dials();
        while let Some(done) = self.dials.join_next().await {
            if let Ok(d) = done {
                self.file(d);
            }
        }
        (0..self.validators.len()).filter(|&v| (0..self.keys.len()).any(|a| self.live(v, a).is_some())).count()
    }

    /// The connection of appliance 0 to validator position `v` (subscriptions go through it),
    /// dialled now, waiting at most [`CONNECT_TIMEOUT`], if it is gone.
    pub async fn watcher(&mut self, v: usize) -> Option<ValidatorClient> {
        self.redial();
        if let Some(c) = self.live(v, 0) {
            return Some(c);
        }
        let r = dial(&self.endpoint, self.validators[v], &self.keys[0], CONNECT_TIMEOUT).await;
        let ok = r.is_ok();
        let was_dialling = self.slots[v][0].dialling;
        self.file((v, 0, r));
        // A background dial of the same slot may still finish; it then replaces this one.
        self.slots[v][0].dialling = was_dialling && !ok;
        self.live(v, 0)
    }

    /// Sends each `(appliance, request)` to every validator, all at once, each request
    /// waiting at most until `deadline` (and [`REQUEST_TIMEOUT`]), and waits for every
    /// answer ([`Links::start`], then [`Links::file_answer`] for each). One outcome per
    /// request, in order.
    pub async fn submit_all(&mut self, requests: Vec<(usize, DeviceRequest)>, deadline: Instant) -> Vec<Outcome> {
        let mut round = self.start(requests, deadline);
        while let Some(answer) = round.next().await {
            self.file_answer(&mut round, answer);
        }
        round.outcomes
    }

    /// Starts sending each `(appliance, request)` to every validator, all at once, each
    /// request waiting at most until `deadline` (and [`REQUEST_TIMEOUT`]), in the background:
    /// nothing waits until the caller polls [`Round::next`]. A connection that is gone, or
    /// that fails on the way (a restarted validator resets it), is dialled again inside the
    /// request and the request sent once more if time remains; [`Links::file_answer`] keeps
    /// the new connection.
    pub fn start(&mut self, requests: Vec<(usize, DeviceRequest)>, deadline: Instant) -> Round {
        self.redial();
        let limit = deadline.min(Instant::now() + REQUEST_TIMEOUT);
        let mut round = Round { sends: JoinSet::new(), outcomes: vec![Outcome::default(); requests.len()] };
        for (r, (a, request)) in requests.into_iter().enumerate() {
            let request = std::sync::Arc::new(request);
            for v in 0..self.validators.len() {
                let (request, live, target) = (request.clone(), self.live(v, a), self.validators[v]);
                let (endpoint, key) = (self.endpoint.clone(), self.keys[a].clone());
                round.sends.spawn(async move {
                    let send = |c: ValidatorClient| {
                        let request = request.clone();
                        async move {
                            match tokio::time::timeout_at(limit, c.submit(&request)).await {
                                Ok(r) => r.map_err(|e| e.to_string()),
                                Err(_) => Err("no answer before the deadline".to_string()),
                            }
                        }
                    };
                    let mut fresh = None;
                    let first = match live {
                        Some(c) => send(c).await,
                        None => Err("no connection".to_string()),
                    };
                    let answer = match first {
                        Err(_) if Instant::now() < limit => match dial(&endpoint, target, &key, limit.saturating_duration_since(Instant::now()).min(CONNECT_TIMEOUT)).await {
                            Ok(c) => {
                                fresh = Some(c.clone());
                                send(c).await
                            }
                            Err(e) => Err(e),
                        },
                        other => other,
                    };
                    Answer { request: r, validator: v, appliance: a, answer, fresh }
                });
            }
        }
        round
    }

    /// Files one answer of `round`: counts it in its request's outcome and keeps a
    /// connection dialled on the way.
    pub fn file_answer(&mut self, round: &mut Round, a: Answer) {
        if let Some(c) = a.fresh {
            let slot = &mut self.slots[a.validator][a.appliance];
            slot.client = Some(c);
            slot.backoff.reset();
        }
        let validator = self.validators[a.validator].index;
        let outcome = &mut round.outcomes[a.request];
        match a.answer {
            Ok(DeviceResponse::Accepted) => outcome.accepted += 1,
            Ok(DeviceResponse::Rejected { label, message }) => {
                debug!(validator, label, "refused: {message}");
                outcome.refused.push(label);
            }
            Err(e) => {
                warn!(validator, "submit failed: {e}");
                outcome.failed += 1;
            }
        }
    }

    /// Closes every connection.
    pub fn close(&self) {
        self.endpoint.close(0u32.into(), b"bye");
    }
}
