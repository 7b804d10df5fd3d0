//! A small builder for convex QPs `min ½ xᵀPx + qᵀx  s.t.  A_eq x = b_eq, A_le x ≤ b_le`, solved
//! with clarabel. Device-side only: floats never reach the log.

use clarabel::algebra::CscMatrix;
use clarabel::solver::{DefaultSettings, DefaultSolver, IPSolver, SolverStatus, SupportedConeT};
use thiserror::Error;

/// A QP the solver did not solve.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum QpError {
    /// clarabel stopped without an optimal solution.
    #[error("QP solver stopped with status {status}")]
    NotSolved {
        /// The solver status, in words.
        status: String,
    },
    /// clarabel rejected the problem data.
    #[error("QP data rejected by the solver: {0}")]
    Data(String),
}

/// A sparse linear row: (variable, coefficient) pairs and its right-hand side.
pub(crate) type Row = (Vec<(usize, f64)>, f64);

/// The problem under construction.
#[derive(Debug, Default, Clone)]
pub(crate) struct Qp {
    n: usize,
    p: Vec<(usize, usize, f64)>,
    q: Vec<f64>,
    eq: Vec<Row>,
    le: Vec<Row>,
}

/// A solution: x, the multipliers of the equality rows (in the order added), the objective.
#[derive(Debug, Clone)]
pub(crate) struct Solution {
    pub x: Vec<f64>,
    pub eq_duals: Vec<f64>,
    #[allow(dead_code)]
    pub objective: f64,
}

impl Qp {
    /// Adds `count` variables and returns the index of the first.
    pub fn vars(&mut self, count: usize) -> usize {
        let first = self.n;
        self.n += count;
        self.q.resize(self.n, 0.0);
        first
    }

    /// Adds `½ w x_i²` to the objective.
    pub fn square(&mut self, i: usize, w: f64) {
        if w != 0.0 {
            self.p.push((i, i, w));
        }
    }

    /// Adds `c x_i` to the objective.
    pub fn linear(&mut self, i: usize, c: f64) {
        self.q[i] += c;
    }

    /// Adds the row Σ a_j x_j = b; returns its index among equality rows.
    pub fn eq(&mut self, row: Vec<(usize, f64)>, b: f64) -> usize {
        self.eq.push((row, b));
        self.eq.len() - 1
    }

    /// Adds the row Σ a_j x_j ≤ b.
    pub fn le(&mut self, row: Vec<(usize, f64)>, b: f64) {
        self.le.push((row, b));
    }

    /// Adds lo ≤ x_i ≤ hi.
    pub fn bounds(&mut self, i: usize, lo: f64, hi: f64) {
        self.le(vec![(i, 1.0)], hi);
        self.le(vec![(i, -1.0)], -lo);
    }

    /// Solves with clarabel.
    pub fn solve(self) -> Result<Solution, QpError> {
        let n = self.n;
        let (pi, pj, pv) = self.p.iter().fold((vec![], vec![], vec![]), |(mut i, mut j, mut v), &(a, b, w)| {
            i.push(a.min(b));
            j.push(a.max(b));
            v.push(w);
            (i, j, v)
        });
        let p = CscMatrix::new_from_triplets(n, n, pi, pj, pv);
        let m = self.eq.len() + self.le.len();
        let (mut ai, mut aj, mut av, mut b) = (vec![], vec![], vec![], Vec::with_capacity(m));
        for (r, (row, rhs)) in self.eq.iter().chain(&self.le).enumerate() {
            for &(j, a) in row {
                ai.push(r);
                aj.push(j);
                av.push(a);
            }
            b.push(*rhs);
        }
        let a = CscMatrix::new_from_triplets(m, n, ai, aj, av);
        let mut cones = Vec::new();
        if !self.eq.is_empty() {
            cones.push(SupportedConeT::ZeroConeT(self.eq.len()));
        }
        if !self.le.is_empty() {
            cones.push(SupportedConeT::NonnegativeConeT(self.le.len()));
        }
        let settings = DefaultSettings { verbose: false, ..DefaultSettings::default() };
        let mut solver = DefaultSolver::new(&p, &self.q, &a, &b, &cones, settings).map_err(|e| QpError::Data(format!("{e:?}")))?;
        solver.solve();
        let sol = &solver.solution;
        match sol.status {
            // InsufficientProgress leaves a near-optimal point; callers round it and the native
            // checker decides, so it is as usable as AlmostSolved.
            SolverStatus::Solved | SolverStatus::AlmostSolved | SolverStatus::InsufficientProgress => {
                Ok(Solution { x: sol.x.clone(), eq_duals: sol.z[..self.eq.len()].to_vec(), objective: sol.obj_val })
            }
            status => Err(QpError::NotSolved { status: format!("{status:?}") }),
        }
    }
}
