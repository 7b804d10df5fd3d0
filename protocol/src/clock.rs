//! The market clock (DESIGN §1) as a sans-IO state machine: it never reads a clock; the host
//! passes `now` (ms since the Unix epoch, from the log's timestamps) with every event and gets
//! back the actions that became due.
//!
//! Phases: Registration → Scheduling (iterations k = 1..=K_max, each with a submission
//! deadline) → Final → Execution (slot by slot) → Settlement.

use std::collections::BTreeSet;

use thiserror::Error;

use crate::entry::MarketSpec;
use crate::ids::DeviceId;

/// Most devices a market enrolls (bounds the clock's sets).
pub const MAX_ENROLLED: usize = crate::admm::MAX_DEVICES;

/// Timing of one market.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockConfig {
    /// Registration closes at this time.
    pub registration_close_ms: u64,
    /// Length of each iteration's submission window.
    pub iteration_ms: u64,
    /// K_max.
    pub max_iterations: u32,
    /// Slot 0 starts at this time.
    pub execution_start_ms: u64,
    /// Δ in ms.
    pub slot_ms: u64,
    /// T.
    pub slots: u32,
}

/// Where the market is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Enrollments accepted.
    Registration,
    /// Updates for iteration `iteration` accepted until `deadline_ms`.
    Scheduling {
        /// k.
        iteration: u32,
        /// End of its submission window.
        deadline_ms: u64,
    },
    /// The schedule is final; waiting for execution to start.
    Final,
    /// Slot `slot` is being executed.
    Execution {
        /// t.
        slot: u32,
    },
    /// Meter readings and bills.
    Settlement,
}

/// What became due; the host carries it out (aggregate, propose, actuate...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Registration closed: the enrolled set is fixed; iteration 1 opens.
    CloseRegistration,
    /// Iteration k's deadline passed: aggregate the updates received.
    IterationDeadline {
        /// k.
        iteration: u32,
    },
    /// Commit the final schedule (after convergence or K_max).
    Finalize,
    /// Slot t starts.
    StartSlot {
        /// t.
        slot: u32,
    },
    /// All slots are over: settle.
    StartSettlement,
}

/// A rejected event, with what was expected.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ClockError {
    /// Timings that cannot work.
    #[error("invalid clock: {0}")]
    Config(&'static str),
    /// Enrollment outside the registration window.
    #[error("enrollment at {now_ms} ms: registration closed at {close_ms} ms")]
    RegistrationClosed {
        /// When it arrived.
        now_ms: u64,
        /// When registration closed.
        close_ms: u64,
    },
    /// The device enrolled already.
    #[error("device {0} is already enrolled")]
    DuplicateEnrollment(DeviceId),
    /// The market is full.
    #[error("the market is full ({MAX_ENROLLED} devices)")]
    Full,
    /// An update outside the scheduling phase.
    #[error("update outside scheduling (phase {0:?})")]
    NotScheduling(Phase),
    /// An update for an iteration that is over.
    #[error("update for iteration {got}: iteration {current} is open")]
    StaleIteration {
        /// The update's k.
        got: u32,
        /// The open k.
        current: u32,
    },
    /// An update for an iteration that has not opened.
    #[error("update for iteration {got}: only iteration {current} is open")]
    FutureIteration {
        /// The update's k.
        got: u32,
        /// The open k.
        current: u32,
    },
    /// An update after its iteration's deadline (before the host ticked).
    #[error("update at {now_ms} ms: iteration {iteration} closed at {deadline_ms} ms")]
    DeadlinePassed {
        /// k.
        iteration: u32,
        /// When it arrived.
        now_ms: u64,
        /// The deadline.
        deadline_ms: u64,
    },
    /// The device is not enrolled.
    #[error("device {0} is not enrolled in this market")]
    UnknownDevice(DeviceId),
    /// The device already submitted in this iteration.
    #[error("device {device} already submitted for iteration {iteration}")]
    DuplicateUpdate {
        /// The device.
        device: DeviceId,
        /// k.
        iteration: u32,
    },
}

/// The market clock.
#[derive(Debug, Clone)]
pub struct MarketClock {
    cfg: ClockConfig,
    phase: Phase,
    enrolled: BTreeSet<DeviceId>,
    submitted: BTreeSet<DeviceId>,
    converged: bool,
}

impl MarketClock {
    /// Whether the schedule became final by convergence (rather than at K_max).
    pub fn is_converged(&self) -> bool {
        self.converged
    }
}

impl ClockConfig {
    /// The clock of a market spec.
    pub fn from_spec(m: &MarketSpec) -> ClockConfig {
        ClockConfig {
            registration_close_ms: m.registration_close_ms,
            iteration_ms: m.iteration_ms,
            max_iterations: m.max_iterations,
            execution_start_ms: m.execution_start_ms,
            slot_ms: m.slot_ms(),
            slots: m.slots as u32,
        }
    }

    /// When iteration k's submission window closes: registration close + k · iteration length.
    pub fn deadline(&self, k: u32) -> u64 {
        self.registration_close_ms.saturating_add(self.iteration_ms.saturating_mul(k as u64))
    }

    /// How often enrollment batches are due while registration is open, for a genesis
    /// timestamped `genesis_ms`: the iteration length, or half the registration window if that
    /// is shorter (at least 1 ms).
    pub fn enrollment_interval(&self, genesis_ms: u64) -> u64 {
        let window = self.registration_close_ms.saturating_sub(genesis_ms);
        self.iteration_ms.min(window / 2).max(1)
    }

    /// When the next enrollment batch is due after a registration-phase tip timestamped
    /// `tip_ms`, or `None` once registration is over. Batches come one interval apart (1 ms
    /// after a full batch, so a backlog drains), never later than the close C: the batch
    /// timestamped at or after C is the *closing batch*, which takes every enrollment admitted
    /// before C (admission ends at C). Registration is over once the tip is a closing batch
    /// that is not full.
    pub fn next_batch_ms(&self, genesis_ms: u64, tip_ms: u64, tip: RegistrationTip) -> Option<u64> {
        let full = matches!(tip, RegistrationTip::Batch { enrollments } if enrollments >= MAX_ENROLLMENTS_PER_ENTRY);
        if matches!(tip, RegistrationTip::Batch { .. }) && tip_ms >= self.registration_close_ms && !full {
            return None;
        }
        let gap = if full { 1 } else { self.enrollment_interval(genesis_ms) };
        Some(tip_ms.saturating_add(gap).min(self.registration_close_ms).max(tip_ms.saturating_add(1)))
    }
}

/// Most enrollments in one entry (≈ 330 bytes each with the attestation, so a full batch,
/// ≈ 1.4 MB, fits one 16 MiB peer frame).
pub const MAX_ENROLLMENTS_PER_ENTRY: usize = 4096;

/// What the tip is while registration runs: it decides when the next batch is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegistrationTip {
    /// The genesis entry.
    Genesis,
    /// An enrollment batch holding this many enrollments.
    Batch {
        /// How many enrollments the batch holds.
        enrollments: usize,
    },
}

impl MarketClock {
    /// A clock in registration; checks that scheduling ends before execution starts.
    pub fn new(cfg: ClockConfig) -> Result<MarketClock, ClockError> {
        if cfg.iteration_ms == 0 || cfg.slot_ms == 0 || cfg.slots == 0 || cfg.max_iterations == 0 {
            return Err(ClockError::Config("iteration length, slot length, T and K_max must be positive"));
        }
        if cfg.deadline(cfg.max_iterations) > cfg.execution_start_ms {
            return Err(ClockError::Config("the last iteration deadline is after execution starts"));
        }
        Ok(MarketClock { cfg, phase: Phase::Registration, enrolled: BTreeSet::new(), submitted: BTreeSet::new(), converged: false })
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The enrolled devices.
    pub fn enrolled(&self) -> &BTreeSet<DeviceId> {
        &self.enrolled
    }

    /// The devices that submitted in the open iteration.
    pub fn submitted(&self) -> &BTreeSet<DeviceId> {
        &self.submitted
    }

    /// When the host should tick next (the next phase change), if any.
    pub fn next_deadline(&self) -> Option<u64> {
        match self.phase {
            Phase::Registration => Some(self.cfg.registration_close_ms),
            Phase::Scheduling { deadline_ms, .. } => Some(deadline_ms),
            Phase::Final => Some(self.cfg.execution_start_ms),
            Phase::Execution { slot } => Some(self.cfg.execution_start_ms + (slot as u64 + 1) * self.cfg.slot_ms),
            Phase::Settlement => None,
        }
    }

    /// An enrollment arriving at `now_ms`.
    pub fn on_enrollment(&mut self, now_ms: u64, device: DeviceId) -> Result<(), ClockError> {
        if self.phase != Phase::Registration || now_ms >= self.cfg.registration_close_ms {
            return Err(ClockError::RegistrationClosed { now_ms, close_ms: self.cfg.registration_close_ms });
        }
        if self.enrolled.contains(&device) {
            return Err(ClockError::DuplicateEnrollment(device));
        }
        if self.enrolled.len() >= MAX_ENROLLED {
            return Err(ClockError::Full);
        }
        self.enrolled.insert(device);
        Ok(())
    }

    /// An update for iteration `iteration` arriving at `now_ms`.
    pub fn on_update(&mut self, now_ms: u64, device: DeviceId, iteration: u32) -> Result<(), ClockError> {
        let Phase::Scheduling { iteration: current, deadline_ms } = self.phase else {
            return Err(ClockError::NotScheduling(self.phase));
        };
        if iteration < current {
            return Err(ClockError::StaleIteration { got: iteration, current });
        }
        if iteration > current {
            return Err(ClockError::FutureIteration { got: iteration, current });
        }
        if now_ms >= deadline_ms {
            return Err(ClockError::DeadlinePassed { iteration, now_ms, deadline_ms });
        }
        if !self.enrolled.contains(&device) {
            return Err(ClockError::UnknownDevice(device));
        }
        if !self.submitted.insert(device) {
            return Err(ClockError::DuplicateUpdate { device, iteration });
        }
        Ok(())
    }

    /// The host reports that the iteration it just aggregated met the stopping rule: the open
    /// iteration is cancelled and the schedule becomes final now.
    pub fn converged(&mut self) -> Option<Action> {
        match self.phase {
            Phase::Scheduling { .. } => {
                self.converged = true;
                self.submitted.clear();
                self.phase = Phase::Final;
                Some(Action::Finalize)
            }
            _ => None,
        }
    }

    /// Advances to `now_ms` and returns the actions that became due, in order. Each call does a
    /// bounded amount of work: at most one action per phase step, K_max + T + 4 steps in all.
    pub fn tick(&mut self, now_ms: u64) -> Vec<Action> {
        let mut actions = Vec::new();
        let bound = self.cfg.max_iterations as usize + self.cfg.slots as usize + 4;
        for _ in 0..bound {
            let Some(due) = self.next_deadline() else { break };
            if now_ms < due {
                break;
            }
            self.phase = match self.phase {
                Phase::Registration => {
                    actions.push(Action::CloseRegistration);
                    self.submitted.clear();
                    Phase::Scheduling { iteration: 1, deadline_ms: self.cfg.deadline(1) }
                }
                Phase::Scheduling { iteration, .. } => {
                    actions.push(Action::IterationDeadline { iteration });
                    self.submitted.clear();
                    if iteration >= self.cfg.max_iterations {
                        actions.push(Action::Finalize);
                        Phase::Final
                    } else {
                        Phase::Scheduling { iteration: iteration + 1, deadline_ms: self.cfg.deadline(iteration + 1) }
                    }
                }
                Phase::Final => {
                    actions.push(Action::StartSlot { slot: 0 });
                    Phase::Execution { slot: 0 }
                }
                Phase::Execution { slot } if slot + 1 < self.cfg.slots => {
                    actions.push(Action::StartSlot { slot: slot + 1 });
                    Phase::Execution { slot: slot + 1 }
                }
                Phase::Execution { .. } => {
                    actions.push(Action::StartSettlement);
                    Phase::Settlement
                }
                Phase::Settlement => Phase::Settlement,
            };
        }
        actions
    }
}
