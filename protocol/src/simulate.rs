//! An in-process ADMM run: every device takes its local step against the current public
//! variables, and the validators' [`AdmmState`] aggregates. No network, no proofs: the maths
//! alone, for tests, benchmarks and the reference figures of the demo.

use std::collections::BTreeMap;

use circuits::fixed::Watts;

use crate::admm::{AdmmError, AdmmParams, AdmmState, Residuals};
use crate::ids::DeviceId;
use crate::local::local_step;
use crate::scenario::Device;

/// How many local-step failures a [`Run`] keeps the details of.
pub const MAX_FAILURES_KEPT: usize = 16;

/// The outcome of a run.
#[derive(Debug, Clone)]
pub struct Run {
    /// Iterations applied.
    pub iterations: u32,
    /// Whether the stopping rule held before K_max.
    pub converged: bool,
    /// Residuals per iteration.
    pub residuals: Vec<Residuals>,
    /// The final state.
    pub state: AdmmState,
    /// Local steps that failed (the device then kept its previous schedule).
    pub failed_steps: usize,
    /// The first few failures: (iteration, device, error).
    pub failures: Vec<(u32, DeviceId, String)>,
}

impl Run {
    /// The final schedules in device order.
    pub fn schedules(&self, devices: &[Device]) -> Vec<Vec<Watts>> {
        devices.iter().map(|d| self.state.schedules()[&d.id].clone()).collect()
    }
}

/// Runs ADMM until convergence or K_max. `participates(k, i)` says whether device i submits in
/// iteration k (a device that does not keeps its previous schedule, DESIGN §4).
pub fn run(devices: &[Device], params: AdmmParams, mut participates: impl FnMut(u32, usize) -> bool) -> Result<Run, AdmmError> {
    let mut state = AdmmState::new(params.clone(), devices.iter().map(|d| d.id))?;
    let mut residuals = Vec::new();
    let mut failed_steps = 0;
    let mut failures = Vec::new();
    let mut converged = false;
    while state.iteration() < params.max_iterations {
        let k = state.iteration();
        let latest: &BTreeMap<DeviceId, Vec<Watts>> = state.schedules();
        let mut updates = Vec::with_capacity(devices.len());
        for (i, d) in devices.iter().enumerate() {
            if !participates(k, i) {
                continue;
            }
            match local_step(&d.params, &d.costs, params.rho, state.variables(), &latest[&d.id]) {
                Ok(x) => updates.push((d.id, x)),
                Err(e) => {
                    failed_steps += 1;
                    if failures.len() < MAX_FAILURES_KEPT {
                        failures.push((k, d.id, e.to_string()));
                    }
                }
            }
        }
        let r = state.apply_iteration(&updates)?;
        residuals.push(r);
        if r.converged() {
            converged = true;
            break;
        }
    }
    Ok(Run { iterations: state.iteration(), converged, residuals, state, failed_steps, failures })
}
