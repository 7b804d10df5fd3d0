//! Markets on one chain (DESIGN §1, §6): the genesis opens the chain's first market; *market
//! operators* named in the genesis open the following ones with a signed [`MarketOpen`]; a
//! device leaves a market whose registration is still open with a signed [`Withdrawal`].
//!
//! What validators check of an opening before committing it ([`check_open`]): the signature
//! of an operator of this chain (in its own domain), an id never used on the chain, a
//! registration close after the opening entry, scheduling that ends before execution starts,
//! an execution span that overlaps no other market's (a device follows one schedule at a
//! time), ADMM parameters the fixed-point engine computes without overflow, and at most
//! [`MAX_LIVE_MARKETS`] markets not yet final.

use borsh::{BorshDeserialize, BorshSerialize};
use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::clock::{ClockConfig, MarketClock};
use crate::codec::encode;
use crate::entry::MarketSpec;
use crate::ids::DeviceId;
use crate::sign::{sign, verify, ChainId, Domain, SignatureBytes, SignatureError};

/// Most markets live (opened, not final) at once on one chain: it bounds the validators'
/// per-market state.
pub const MAX_LIVE_MARKETS: usize = 16;

/// A market operator: its ed25519 public key bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, BorshSerialize, BorshDeserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[serde(transparent)]
pub struct OperatorId(#[serde(with = "crate::ids::hex32")] pub [u8; 32]);

impl std::fmt::Display for OperatorId {
    /// The first 8 bytes in hex.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&crate::ids::hex(&self.0[..8]))
    }
}

/// A market operator opens a market: the day's parameters, grid cost and clock.
#[derive(Debug, Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct MarketOpen {
    /// The market (id, T, Δ, ADMM constants, grid cost, registration close, iteration window,
    /// K_max, execution start).
    pub spec: MarketSpec,
}

/// A [`MarketOpen`] signed by a market operator in [`Domain::MarketOpen`].
#[derive(Debug, Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct SignedMarketOpen {
    /// The opening.
    pub body: MarketOpen,
    /// Who signed it.
    pub operator: OperatorId,
    /// Signature by `operator`.
    pub signature: SignatureBytes,
}

impl SignedMarketOpen {
    /// Signs an opening with an operator's key.
    pub fn new(key: &SigningKey, chain: &ChainId, spec: MarketSpec) -> SignedMarketOpen {
        let body = MarketOpen { spec };
        let signature = sign(key, chain, Domain::MarketOpen, &encode(&body));
        SignedMarketOpen { body, operator: OperatorId(key.verifying_key().to_bytes()), signature }
    }

    /// The market id.
    pub fn market_id(&self) -> u64 {
        self.body.spec.market_id
    }
}

/// A device leaves market `market_id` (its enrollment there is cancelled) before registration
/// closes.
#[derive(Debug, Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Withdrawal {
    /// The market.
    pub market_id: u64,
    /// The device.
    pub device: DeviceId,
}

/// A withdrawal signed by the device key in [`Domain::Withdrawal`].
#[derive(Debug, Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct SignedWithdrawal {
    /// The withdrawal.
    pub body: Withdrawal,
    /// Signature by `body.device`.
    pub signature: SignatureBytes,
}

impl SignedWithdrawal {
    /// Signs a withdrawal with the device key.
    pub fn new(key: &SigningKey, chain: &ChainId, body: Withdrawal) -> SignedWithdrawal {
        let signature = sign(key, chain, Domain::Withdrawal, &encode(&body));
        SignedWithdrawal { body, signature }
    }

    /// Checks the signature against the withdrawing device's key.
    pub fn verify(&self, chain: &ChainId) -> Result<(), SignatureError> {
        verify(&self.body.device.0, chain, Domain::Withdrawal, &encode(&self.body), &self.signature)
    }
}

/// When a market's devices execute: `[execution start, execution start + T · slot length)`
/// in ms ([`MarketSpec::slot_ms`]: Δ, or a compressed market's slot).
pub fn execution_span(m: &MarketSpec) -> (u64, u64) {
    (m.execution_start_ms, m.execution_start_ms.saturating_add(m.slots as u64 * m.slot_ms()))
}

/// When market `m` is over by its own clock: its execution end, or, if it settles, its meter
/// deadline (docs/protocol.md §9). No honest validator prunes its update bodies earlier.
pub fn over_ms(m: &MarketSpec) -> u64 {
    crate::settlement::meter_deadline(m).unwrap_or(execution_span(m).1)
}

/// Whether market `m` is over by its clock at `now_ms` ([`over_ms`]): from then on a validator
/// may prune its update bodies, so a receiver accepts its iteration entries without bodies
/// (docs/protocol.md §6.9); before, bodies missing are withheld.
pub fn over_by_clock(m: &MarketSpec, now_ms: u64) -> bool {
    over_ms(m) <= now_ms
}

/// Why a market opening is refused. Each has a metrics label ([`Self::label`]).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum OpenError {
    /// Signed by a key that is not a market operator of this chain.
    #[error("market {market_id} is opened by {operator}, which is not a market operator of this chain")]
    NotAnOperator {
        /// The market.
        market_id: u64,
        /// The signer.
        operator: OperatorId,
    },
    /// The signature does not verify.
    #[error("opening of market {market_id}: {reason}")]
    BadSignature {
        /// The market.
        market_id: u64,
        /// What failed.
        reason: String,
    },
    /// The id names a market this chain opened before.
    #[error("market id {0} is already used on this chain")]
    Reused(u64),
    /// Registration would close at or before the opening.
    #[error("market {market_id}: registration closes at {close_ms} ms, not after the opening at {at_ms} ms")]
    Past {
        /// The market.
        market_id: u64,
        /// Its registration close.
        close_ms: u64,
        /// When it would open.
        at_ms: u64,
    },
    /// Its execution overlaps another market's.
    #[error("market {market_id} executes over [{from_ms}, {until_ms}) ms, overlapping market {other}")]
    Overlap {
        /// The market.
        market_id: u64,
        /// Its execution start.
        from_ms: u64,
        /// Its execution end.
        until_ms: u64,
        /// The market it overlaps.
        other: u64,
    },
    /// Inconsistent timings or parameters out of the engine's range.
    #[error("market {market_id}: {reason}")]
    Params {
        /// The market.
        market_id: u64,
        /// What is wrong.
        reason: String,
    },
    /// [`MAX_LIVE_MARKETS`] markets are live already.
    #[error("market {0}: {MAX_LIVE_MARKETS} markets are live already")]
    TooMany(u64),
}

impl OpenError {
    /// A short stable label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            OpenError::NotAnOperator { .. } => "not_an_operator",
            OpenError::BadSignature { .. } => "bad_open_signature",
            OpenError::Reused(_) => "market_id_reused",
            OpenError::Past { .. } => "market_past",
            OpenError::Overlap { .. } => "market_overlap",
            OpenError::Params { .. } => "market_params",
            OpenError::TooMany(_) => "too_many_markets",
        }
    }
}

/// The checks of a market's own parameters, wherever it is opened (genesis or
/// [`MarketOpen`]): scheduling ends before execution starts, the clock's lengths are positive,
/// the ADMM parameters lie within the fixed-point engine's range, the settlement rule within
/// its bounds, and a compressed slot within 1 ms..=Δ.
pub fn check_spec(m: &MarketSpec) -> Result<(), OpenError> {
    let params = |reason: String| OpenError::Params { market_id: m.market_id, reason };
    MarketClock::new(ClockConfig::from_spec(m)).map_err(|e| params(e.to_string()))?;
    m.admm().map_err(|e| params(e.to_string()))?.check().map_err(|e| params(e.to_string()))?;
    if let Some(rule) = &m.settlement {
        rule.check().map_err(params)?;
    }
    if let Some(ms) = m.compressed_slot_ms {
        if ms == 0 || ms as u64 > m.slot_seconds as u64 * 1000 {
            return Err(params(format!("a compressed slot of {ms} ms is not within 1 ms..=Δ ({} s)", m.slot_seconds)));
        }
    }
    Ok(())
}

/// The chain's markets as an opening is checked against them.
pub struct OpenContext<'a> {
    /// The market operators of the genesis.
    pub operators: &'a [OperatorId],
    /// Every market id used so far on the chain.
    pub used: &'a std::collections::BTreeSet<u64>,
    /// The markets whose execution may not be over (for the overlap check).
    pub others: &'a [&'a MarketSpec],
    /// How many markets are not final yet.
    pub live: usize,
}

/// Whether `o` may open a market on `chain` in an entry timestamped `at_ms`: checked in the
/// order of the module doc; the first failure is returned.
pub fn check_open(o: &SignedMarketOpen, chain: &ChainId, at_ms: u64, cx: &OpenContext<'_>) -> Result<(), OpenError> {
    let m = &o.body.spec;
    let id = m.market_id;
    if !cx.operators.contains(&o.operator) {
        return Err(OpenError::NotAnOperator { market_id: id, operator: o.operator });
    }
    verify(&o.operator.0, chain, Domain::MarketOpen, &encode(&o.body), &o.signature)
        .map_err(|e| OpenError::BadSignature { market_id: id, reason: e.to_string() })?;
    if cx.used.contains(&id) {
        return Err(OpenError::Reused(id));
    }
    if m.registration_close_ms <= at_ms {
        return Err(OpenError::Past { market_id: id, close_ms: m.registration_close_ms, at_ms });
    }
    check_spec(m)?;
    let (from_ms, until_ms) = execution_span(m);
    for other in cx.others {
        let (a, b) = execution_span(other);
        if from_ms < b && a < until_ms {
            return Err(OpenError::Overlap { market_id: id, from_ms, until_ms, other: other.market_id });
        }
    }
    if cx.live >= MAX_LIVE_MARKETS {
        return Err(OpenError::TooMany(id));
    }
    Ok(())
}
