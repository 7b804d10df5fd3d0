//! The centralised reference (DESIGN §4): the whole sharing problem, every device's private
//! data known, solved once by clarabel over the specified constraints exactly (without the
//! rounding margins of a device's local step, `local::Margins`). Tests and benchmarks compare
//! ADMM against it; it is never part of the protocol.

use circuits::fixed::Watts;

use crate::admm::GridCost;
use crate::local::{add_costs, add_model, Margins};
use crate::qp::{Qp, QpError};
use crate::scenario::Device;

const KW: f64 = 1000.0;

/// The optimum of the centralised problem.
#[derive(Debug, Clone)]
pub struct CentralSolution {
    /// x_i in W (floats), in device order.
    pub schedules: Vec<Vec<f64>>,
    /// Σ f_i(x_i) + g(Σ x_i).
    pub objective: f64,
    /// The part of every objective no schedule changes (valley filling: γ/2 ‖b‖²; else 0).
    pub constant: f64,
    /// For the exchange market: the clearing price per slot in €/MWh (the multipliers of
    /// Σ_i x_it = 0); `None` otherwise.
    pub prices: Option<Vec<f64>>,
}

/// Solves min Σ f_i(x_i) + g(Σ x_i) over x_i ∈ X_i.
pub fn solve_central(devices: &[Device], grid: &GridCost) -> Result<CentralSolution, QpError> {
    let t = devices.first().map_or(0, |d| d.params.slots().get());
    let mut qp = Qp::default();
    let blocks: Vec<usize> = devices
        .iter()
        .map(|d| {
            let x = qp.vars(t);
            add_model(&mut qp, &d.params, x, Margins::Exact);
            add_costs(&mut qp, &d.costs, x, t);
            x
        })
        .collect();
    let column = |s: usize| blocks.iter().map(move |&x| (x + s, -1.0));
    let mut constant = 0.0;
    let mut price_rows = None;
    match grid {
        GridCost::ValleyFilling { gamma, base_load } => {
            let g = gamma.to_f64();
            let z = qp.vars(t);
            for (s, &b) in base_load.iter().enumerate() {
                qp.eq(std::iter::once((z + s, 1.0)).chain(column(s)).collect(), 0.0);
                // γ/2 (1000 ζ + b)² = γ/2·10⁶ ζ² + 1000 γ b ζ + γ/2 b².
                let b = b as f64;
                qp.square(z + s, g * KW * KW);
                qp.linear(z + s, g * KW * b);
                constant += g / 2.0 * b * b;
            }
        }
        GridCost::Tariff { price, feeder_cap } => {
            let z = qp.vars(t);
            for (s, p) in price.iter().enumerate() {
                qp.eq(std::iter::once((z + s, 1.0)).chain(column(s)).collect(), 0.0);
                qp.linear(z + s, p.to_f64() * KW);
                qp.le(vec![(z + s, 1.0)], *feeder_cap as f64 / KW);
            }
        }
        GridCost::Exchange => {
            price_rows = Some((0..t).map(|s| qp.eq(column(s).collect(), 0.0)).collect::<Vec<_>>());
        }
    }
    let sol = qp.solve()?;
    let schedules: Vec<Vec<f64>> = blocks.iter().map(|&x| sol.x[x..x + t].iter().map(|v| v * KW).collect()).collect();
    // clarabel's multiplier z satisfies Px + q + Aᵀz = 0; the row is −Σ_i y_it = 0 in kW, so
    // z_t = ∂f_i/∂y_it for every device, and the price λ_t = −∂f_i/∂x_it (as ADMM's ρu at its
    // fixed point) is −z_t / 1000.
    let prices = price_rows.map(|rows| rows.iter().map(|&r| -sol.eq_duals[r] / KW).collect());
    let objective = sol.objective + constant;
    Ok(CentralSolution { schedules, objective, constant, prices })
}

/// How far an objective is above the central optimum, as fractions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Gap {
    /// Of the whole objective: (f − f*) / |f*|.
    pub whole: f64,
    /// Of the part schedules can change: (f − f*) / |f* − constant|.
    pub controllable: f64,
}

impl CentralSolution {
    /// The gap of `objective` (of [`objective`]) to this optimum.
    pub fn gap(&self, objective: f64) -> Gap {
        let d = objective - self.objective;
        Gap { whole: d / self.objective.abs().max(1e-9), controllable: d / (self.objective - self.constant).abs().max(1e-9) }
    }
}

/// Σ f_i(x_i) + g(Σ x_i) for integer schedules (the ADMM result), in device order. For the
/// tariff the feeder limit and for the exchange the balance are constraints, not costs: check
/// them with [`total_load`].
pub fn objective(devices: &[Device], grid: &GridCost, schedules: &[Vec<Watts>]) -> f64 {
    let private: f64 = devices.iter().zip(schedules).map(|(d, x)| d.costs.evaluate(x)).sum();
    let z = total_load(schedules);
    private
        + match grid {
            GridCost::ValleyFilling { gamma, base_load } => z.iter().zip(base_load).map(|(&z, &b)| gamma.to_f64() / 2.0 * (z as f64 + b as f64).powi(2)).sum(),
            GridCost::Tariff { price, .. } => z.iter().zip(price).map(|(&z, p)| p.to_f64() * z as f64).sum(),
            GridCost::Exchange => 0.0,
        }
}

/// Σ_i x_it per slot.
pub fn total_load(schedules: &[Vec<Watts>]) -> Vec<i64> {
    let t = schedules.first().map_or(0, Vec::len);
    (0..t).map(|s| schedules.iter().map(|x| x[s] as i64).sum()).collect()
}

#[cfg(test)]
mod tests {
    use circuits::fixed::Fixed;
    use circuits::model::battery::Battery;
    use circuits::model::{BatteryParams, ModelParams};

    use super::*;
    use crate::ids::DeviceId;
    use crate::local::Costs;

    /// A battery that must end as charged as it began trades between cheap and dear slots at
    /// its full power: the reference reaches the specified limit (no rounding margin), so it
    /// is a lower bound on every whole-watt schedule the native checker accepts.
    #[test]
    fn the_reference_reaches_the_specified_limits() {
        let battery = Battery { slots: 4, p_charge: 3000, p_discharge: 3000, capacity: 100_000, soc_initial: 50_000, soc_final_min: 50_000 };
        let params = ModelParams::Battery(BatteryParams::new(battery).unwrap());
        let device = Device { id: DeviceId([7; 32]), params, costs: Costs { linear: vec![], quadratic: Fixed::ZERO } };
        let price: Vec<Fixed> = [10.0, 100.0, 10.0, 100.0].iter().map(|&p| Fixed::from_f64("p", p).unwrap()).collect();
        let grid = GridCost::Tariff { price, feeder_cap: 1_000_000 };
        let central = solve_central(std::slice::from_ref(&device), &grid).unwrap();
        let x = &central.schedules[0];
        for (t, want) in [3000.0, -3000.0, 3000.0, -3000.0].into_iter().enumerate() {
            assert!((x[t] - want).abs() < 0.5, "slot {t}: {} W, the limit is {want} W", x[t]);
        }
        let whole = vec![vec![3000, -3000, 3000, -3000]];
        device.params.check(&whole[0]).unwrap();
        assert!(central.objective <= objective(std::slice::from_ref(&device), &grid, &whole) + 1e-3, "the reference is a lower bound");
        assert_eq!(central.constant, 0.0, "a tariff has no constant part");
        let gap = central.gap(central.objective + 1.0);
        assert_eq!(gap.whole, gap.controllable);
        assert!((gap.whole - 1.0 / central.objective.abs()).abs() < 1e-12);
    }
}
