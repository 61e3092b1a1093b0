//! Every noise draw of secretum, through OpenDP measurements (and nowhere else).
//!
//! Each constructor takes the sensitivity that the caller derived from the contribution bounds
//! and the ε it may spend, builds the OpenDP measurement with a scale calibrated so that
//! `measurement.map(sensitivity) <= ε` (OpenDP's own privacy map, which rounds conservatively),
//! and returns a value that releases with that scale. With the `use-openssl` feature, OpenDP
//! draws its randomness from OpenSSL's CSPRNG.
//!
//! Every release is of integers: counts, and sums of fixed-point integers (see
//! [`super::release`]), so one mechanism serves both: OpenDP's discrete Laplace
//! ([`make_discrete_laplace`]) in projects accounted in pure ε, OpenDP's discrete Gaussian
//! ([`make_discrete_gaussian`]) in projects accounted in ρ-zCDP. Quantiles use OpenDP's exponential-mechanism quantile, group
//! keys without a public domain its noise-threshold partition selection.
//!
//! The exact path (`Noise::Exact`) exists only when the crate is built with the `test-exact`
//! feature, which only the test suite enables: the binary cannot reach it.

use std::collections::HashMap;

use opendp::accuracy::{
    accuracy_to_discrete_gaussian_scale, accuracy_to_discrete_laplacian_scale, discrete_gaussian_scale_to_accuracy,
    discrete_laplacian_scale_to_accuracy, gaussian_scale_to_accuracy, laplacian_scale_to_accuracy,
};
use opendp::domains::{AtomDomain, MapDomain, VectorDomain};
use opendp::error::Fallible;
use opendp::measurements::{make_gaussian, make_laplace, make_laplace_threshold, make_private_quantile as opendp_private_quantile};
use opendp::measures::{Approximate, MaxDivergence, ZeroConcentratedDivergence};
use opendp::metrics::{AbsoluteDistance, L1Distance, L01InfDistance, L2Distance, SymmetricDistance};

use super::rule::Rule;
use crate::error::{Error, Result};

/// Confidence level of every reported interval.
pub const ALPHA: f64 = 0.05;

/// Whether releases are noisy. Only noisy exists outside the test suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Noise {
    OpenDp,
    #[cfg(feature = "test-exact")]
    Exact,
}

/// An OpenDP failure while releasing (after the debit): internal, logged.
fn failed(e: opendp::error::Error) -> Error {
    Error::internal(format!("OpenDP: {}", e.message.unwrap_or_else(|| format!("{:?}", e.variant))))
}

/// An OpenDP failure while calibrating (before the debit): the ε asked cannot be met.
fn uncalibrated(epsilon: f64) -> impl Fn(opendp::error::Error) -> Error {
    move |e| Error::refused(Rule::Epsilon, format!("no noise scale spends ε {epsilon} ({})", e.message.unwrap_or_default()))
}

/// Find the smallest scale (to a relative 1e-9) with `loss(scale) <= epsilon`, starting from
/// the analytic guess `sensitivity / epsilon`. OpenDP's maps round up, so the guess may be a hair
/// too small; nudging it up keeps the guarantee exact.
fn calibrate(guess: f64, epsilon: f64, loss: impl Fn(f64) -> Fallible<f64>) -> Result<f64> {
    if !(guess.is_finite() && guess >= 0.0) {
        return Err(Error::refused(Rule::Epsilon, format!("ε {epsilon} needs a noise scale of {guess}, which is not usable")));
    }
    let mut scale = guess;
    for _ in 0..64 {
        if loss(scale).map_err(uncalibrated(epsilon))? <= epsilon {
            return Ok(scale);
        }
        scale *= 1.0 + 1e-9_f64.max((scale * 1e-12).abs());
    }
    Err(Error::refused(Rule::Epsilon, format!("no noise scale spends ε {epsilon}")))
}

/// OpenDP's discrete Laplace over a vector of integers whose L1 sensitivity is known.
#[derive(Debug, Clone, Copy)]
pub struct DiscreteLaplace {
    scale: f64,
}

/// Discrete Laplace noise for a vector of integers of L1 sensitivity `sensitivity` (in the
/// integers' own steps), calibrated to spend `epsilon`: adding or removing one patient moves the
/// vector by at most `sensitivity` in L1, and OpenDP's map gives the loss for that distance.
pub fn make_discrete_laplace(sensitivity: i64, epsilon: f64) -> Result<DiscreteLaplace> {
    if sensitivity == 0 {
        return Ok(DiscreteLaplace { scale: 0.0 });
    }
    let scale = calibrate(sensitivity as f64 / epsilon, epsilon, |scale| {
        make_laplace::<_, _, MaxDivergence>(VectorDomain::new(AtomDomain::<i64>::default()), L1Distance::<i64>::default(), scale, None)?
            .map(&sensitivity)
    })?;
    Ok(DiscreteLaplace { scale })
}

impl DiscreteLaplace {
    /// The noise scale, in steps.
    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// Half-width of the 95% interval, in steps (OpenDP's bound, floored without losing coverage).
    pub fn accuracy(&self) -> f64 {
        discrete_accuracy(self.scale)
    }

    /// Release a vector.
    pub fn release(&self, values: &[i64], noise: Noise) -> Result<Vec<i64>> {
        match noise {
            Noise::OpenDp => {
                let m = make_laplace::<_, _, MaxDivergence>(
                    VectorDomain::new(AtomDomain::<i64>::default()),
                    L1Distance::<i64>::default(),
                    self.scale,
                    None,
                )
                .map_err(failed)?;
                m.invoke(&values.to_vec()).map_err(failed)
            }
            #[cfg(feature = "test-exact")]
            Noise::Exact => Ok(values.to_vec()),
        }
    }
}

/// Half-width of the 95% interval of a discrete Laplace release with this scale.
pub fn discrete_accuracy(scale: f64) -> f64 {
    if scale == 0.0 { 0.0 } else { discrete_laplacian_scale_to_accuracy(scale, ALPHA).map(f64::floor).unwrap_or(f64::INFINITY) }
}

/// Half-width at level `alpha` of a continuous Laplace variable with this scale: the
/// approximation used where several releases combine (means, variances).
pub fn laplace_accuracy_at(scale: f64, alpha: f64) -> f64 {
    if scale == 0.0 { 0.0 } else { laplacian_scale_to_accuracy(scale, alpha).unwrap_or(f64::INFINITY) }
}

/// The ε a discrete Laplace release of this sensitivity needs for a 95% half-width of
/// `half_width` (both in the same steps).
pub fn epsilon_for_accuracy(sensitivity: f64, half_width: f64) -> Result<f64> {
    let scale = accuracy_to_discrete_laplacian_scale(half_width, ALPHA)
        .map_err(|e| Error::refused(Rule::TargetCi, format!("no noise scale gives ±{half_width} ({})", e.message.unwrap_or_default())))?;
    Ok(sensitivity / scale)
}

/// OpenDP's discrete Gaussian over a vector of integers whose L2 sensitivity is known.
#[derive(Debug, Clone, Copy)]
pub struct DiscreteGaussian {
    scale: f64,
}

/// Discrete Gaussian noise for a vector of integers of L2 sensitivity `l2` (in the integers'
/// steps), calibrated to spend `rho` in zero-concentrated DP: adding or removing one patient
/// moves the vector by at most `l2` in L2, and OpenDP's map gives ρ = (l2 / σ)² / 2 for it
/// (Canonne, Kamath & Steinke 2020, Theorem 14), rounded up.
pub fn make_discrete_gaussian(l2: f64, rho: f64) -> Result<DiscreteGaussian> {
    if l2 == 0.0 {
        return Ok(DiscreteGaussian { scale: 0.0 });
    }
    let scale = calibrate(l2 / (2.0 * rho).sqrt(), rho, |scale| gaussian_measurement(scale)?.map(&l2))?;
    Ok(DiscreteGaussian { scale })
}

type GaussianMeasurement = opendp::core::Measurement<VectorDomain<AtomDomain<i64>>, L2Distance<f64>, ZeroConcentratedDivergence, Vec<i64>>;

fn gaussian_measurement(scale: f64) -> Fallible<GaussianMeasurement> {
    make_gaussian::<_, _, ZeroConcentratedDivergence>(
        VectorDomain::new(AtomDomain::<i64>::default()),
        L2Distance::<f64>::default(),
        scale,
        None,
    )
}

impl DiscreteGaussian {
    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// Half-width of the 95% interval, in steps. OpenDP's accuracy `a` of the discrete Gaussian
    /// is strict (P(|X| < a) ≥ 95%), and our intervals are closed: a − 1. OpenDP sums the
    /// density step by step, so above 1,000 steps of scale (sums in fixed point) the continuous
    /// Gaussian's accuracy, rounded up, is used: the two differ by less than a step there.
    pub fn accuracy(&self) -> f64 {
        if self.scale == 0.0 {
            0.0
        } else if self.scale > 1000.0 {
            gaussian_scale_to_accuracy(self.scale, ALPHA).map(f64::ceil).unwrap_or(f64::INFINITY)
        } else {
            discrete_gaussian_scale_to_accuracy(self.scale, ALPHA).map(|a| a - 1.0).unwrap_or(f64::INFINITY)
        }
    }

    pub fn release(&self, values: &[i64], noise: Noise) -> Result<Vec<i64>> {
        match noise {
            Noise::OpenDp => gaussian_measurement(self.scale).map_err(failed)?.invoke(&values.to_vec()).map_err(failed),
            #[cfg(feature = "test-exact")]
            Noise::Exact => Ok(values.to_vec()),
        }
    }
}

/// The additive noise of one count or sum: discrete Laplace (pure ε) or discrete Gaussian
/// (ρ-zCDP), whichever the project is accounted in.
#[derive(Debug, Clone, Copy)]
pub enum Additive {
    Laplace(DiscreteLaplace),
    Gaussian(DiscreteGaussian),
}

impl Additive {
    pub fn scale(&self) -> f64 {
        match self {
            Additive::Laplace(l) => l.scale(),
            Additive::Gaussian(g) => g.scale(),
        }
    }

    /// Half-width of the 95% interval, in steps.
    pub fn accuracy(&self) -> f64 {
        match self {
            Additive::Laplace(l) => l.accuracy(),
            Additive::Gaussian(g) => g.accuracy(),
        }
    }

    /// Half-width at level `alpha` of the continuous distribution of the same scale: the
    /// approximation used where several releases combine (means, variances).
    pub fn accuracy_at(&self, alpha: f64) -> f64 {
        match self {
            Additive::Laplace(l) => laplace_accuracy_at(l.scale(), alpha),
            Additive::Gaussian(g) if g.scale() == 0.0 => 0.0,
            Additive::Gaussian(g) => gaussian_scale_to_accuracy(g.scale(), alpha).unwrap_or(f64::INFINITY),
        }
    }

    pub fn release(&self, values: &[i64], noise: Noise) -> Result<Vec<i64>> {
        match self {
            Additive::Laplace(l) => l.release(values, noise),
            Additive::Gaussian(g) => g.release(values, noise),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Additive::Laplace(_) => "discrete Laplace (OpenDP make_laplace)",
            Additive::Gaussian(_) => "discrete Gaussian (OpenDP make_gaussian, zCDP)",
        }
    }
}

/// The ρ a discrete Gaussian release of L2 sensitivity `l2` needs for a 95% half-width of
/// `half_width` (same steps).
pub fn rho_for_accuracy(l2: f64, half_width: f64) -> Result<f64> {
    // As in [`DiscreteGaussian::accuracy`]: OpenDP's exact search for small scales (its accuracy
    // is strict, ours closed: ask it for one more), the continuous Gaussian's above.
    let scale = if half_width > 2000.0 {
        opendp::accuracy::accuracy_to_gaussian_scale(half_width, ALPHA)
    } else {
        accuracy_to_discrete_gaussian_scale(half_width + 1.0, ALPHA)
    };
    let scale = scale
        .map_err(|e| Error::refused(Rule::TargetCi, format!("no noise scale gives ±{half_width} ({})", e.message.unwrap_or_default())))?;
    Ok((l2 / scale).powi(2) / 2.0)
}

/// OpenDP's private quantile (exponential mechanism over candidates).
#[derive(Debug, Clone)]
pub struct PrivateQuantile {
    candidates: Vec<f64>,
    alpha: f64,
    scale: f64,
}

/// The `alpha`-quantile of one group's values over `candidates`, spending `epsilon`.
///
/// Sensitivity: one patient adds or removes at most `rows` values (symmetric distance `rows`);
/// the score of a candidate moves by at most that much per changed value, and OpenDP's map
/// gives ε = d_in · max(α, 1 − α) · 2 / scale; the scale is calibrated so that map(rows) ≤ ε.
pub fn make_private_quantile(candidates: Vec<f64>, alpha: f64, rows: u32, epsilon: f64) -> Result<PrivateQuantile> {
    let build = |scale: f64| {
        opendp_private_quantile(
            VectorDomain::new(AtomDomain::<f64>::new_non_nan()),
            SymmetricDistance,
            MaxDivergence,
            candidates.clone(),
            alpha,
            scale,
        )
    };
    let scale = calibrate(2.0 * rows as f64 * alpha.max(1.0 - alpha) / epsilon, epsilon, |s| build(s)?.map(&rows))?;
    Ok(PrivateQuantile { candidates, alpha, scale })
}

impl PrivateQuantile {
    pub fn release(&self, values: &[f64], noise: Noise) -> Result<f64> {
        let scale = match noise {
            Noise::OpenDp => self.scale,
            #[cfg(feature = "test-exact")]
            Noise::Exact => 0.0,
        };
        let m = opendp_private_quantile(
            VectorDomain::new(AtomDomain::<f64>::new_non_nan()),
            SymmetricDistance,
            MaxDivergence,
            self.candidates.clone(),
            self.alpha,
            scale,
        )
        .map_err(failed)?;
        m.invoke(&values.to_vec()).map_err(failed)
    }
}

/// OpenDP's noise-threshold partition selection.
#[derive(Debug, Clone, Copy)]
pub struct PartitionSelection {
    scale: f64,
    threshold: i64,
}

/// Partition selection over per-key counts of distinct patients, spending (ε, δ).
///
/// Sensitivity: one patient touches at most `groups` keys (ℓ0) and adds at most 1 to each
/// (distinct patients), so ℓ1 ≤ `groups` and ℓ∞ = 1. OpenDP's map returns (ε, δ): the scale is
/// calibrated for ε, then the threshold is the smallest whose δ fits.
pub fn make_partition_selection(groups: u32, epsilon: f64, delta: f64) -> Result<PartitionSelection> {
    let d_in = (groups, groups as i64, 1i64);
    let scale = calibrate(groups as f64 / epsilon, epsilon, |s| Ok(threshold_measurement(s, i64::MAX / 4)?.map(&d_in)?.0))?;
    // Smallest threshold whose δ fits: δ falls as the threshold rises.
    let fits = |t: i64| -> Result<bool> {
        Ok(threshold_measurement(scale, t).map_err(uncalibrated(epsilon))?.map(&d_in).map_err(uncalibrated(epsilon))?.1 <= delta)
    };
    let (mut lo, mut hi) = (1i64, 2i64);
    while !fits(hi)? {
        lo = hi;
        hi = hi.checked_mul(2).ok_or_else(|| Error::refused(Rule::Delta, format!("no threshold satisfies δ {delta:e}")))?;
    }
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if fits(mid)? { hi = mid } else { lo = mid }
    }
    Ok(PartitionSelection { scale, threshold: hi })
}

type ThresholdMeasurement = opendp::core::Measurement<
    MapDomain<AtomDomain<String>, AtomDomain<i64>>,
    L01InfDistance<AbsoluteDistance<i64>>,
    Approximate<MaxDivergence>,
    HashMap<String, i64>,
>;

fn threshold_measurement(scale: f64, threshold: i64) -> Fallible<ThresholdMeasurement> {
    make_laplace_threshold::<_, _, Approximate<MaxDivergence>>(
        MapDomain::new(AtomDomain::<String>::default(), AtomDomain::<i64>::default()),
        opendp::metrics::L0PInfDistance(AbsoluteDistance::<i64>::default()),
        scale,
        threshold,
        None,
    )
}

impl PartitionSelection {
    /// The keys kept (their noisy counts are not released).
    pub fn release(&self, counts: HashMap<String, i64>, noise: Noise) -> Result<Vec<String>> {
        match noise {
            Noise::OpenDp => {
                let m = threshold_measurement(self.scale, self.threshold).map_err(failed)?;
                Ok(m.invoke(&counts).map_err(failed)?.into_keys().collect())
            }
            #[cfg(feature = "test-exact")]
            Noise::Exact => Ok(counts.into_iter().filter(|(_, c)| *c >= self.threshold).map(|(k, _)| k).collect()),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn calibrated_scales_spend_at_most_epsilon() {
        for (sens, eps) in [(1, 1.0), (10, 0.5), (20, 0.01), (20 << 20, 0.1)] {
            let s = make_discrete_laplace(sens, eps).unwrap().scale();
            assert!((s - sens as f64 / eps).abs() / s < 1e-6, "{s}");
        }
        assert!(make_discrete_laplace(1, 0.0).is_err(), "ε 0 has no scale");
    }

    #[test]
    fn accuracy_matches_laplace_tail() {
        // P(|L| > a) = exp(-a / b) = 0.05  =>  a = b ln 20.
        assert!((laplace_accuracy_at(2.0, ALPHA) - 2.0 * 20f64.ln()).abs() < 1e-9);
        let eps = epsilon_for_accuracy(1.0, 20.0).unwrap();
        let m = make_discrete_laplace(1, eps).unwrap();
        assert!((m.accuracy() - 20.0).abs() <= 1.0, "{}", m.accuracy());
    }

    #[test]
    fn gaussian_scales_and_zcdp_conversions() {
        // ρ = (Δ/σ)²/2: Δ 1 at ρ 0.5 is σ 1.
        let g = make_discrete_gaussian(1.0, 0.5).unwrap();
        assert!((g.scale() - 1.0).abs() < 1e-6, "{}", g.scale());
        // The conversion is OpenDP's: ε(ρ, δ) ≤ ρ + 2√(ρ ln 1/δ) (Bun & Steinke, Prop. 1.3).
        use crate::budget::{zcdp_epsilon, zcdp_rho_for};
        let e = zcdp_epsilon(0.01, 1e-6).unwrap();
        assert!(e > 0.0 && e <= 0.01 + 2.0 * (0.01f64 * (1e6f64).ln()).sqrt(), "{e}");
        let rho = zcdp_rho_for(1.0, 1e-6).unwrap();
        assert!(zcdp_epsilon(rho, 1e-6).unwrap() <= 1.0);
        assert!(zcdp_epsilon(rho * 1.001, 1e-6).unwrap() > 1.0, "the largest ρ that fits");
        assert!(zcdp_rho_for(1.0, 0.0).is_err());
        let r = rho_for_accuracy(1.0, 10.0).unwrap();
        let g = make_discrete_gaussian(1.0, r).unwrap();
        assert!((g.accuracy() - 10.0).abs() <= 1.0, "{}", g.accuracy());
    }

    #[test]
    fn quantile_lands_near_the_median_with_generous_budget() {
        let values: Vec<f64> = (0..1000).map(|i| (i % 100) as f64).collect();
        let candidates: Vec<f64> = (0..=100).map(f64::from).collect();
        let q = make_private_quantile(candidates, 0.5, 1, 10.0).unwrap().release(&values, Noise::OpenDp).unwrap();
        assert!((40.0..=60.0).contains(&q), "{q}");
    }

    #[test]
    fn partition_selection_drops_small_keys() {
        let counts = HashMap::from([("big".to_string(), 10_000), ("tiny".to_string(), 1)]);
        let kept = make_partition_selection(1, 1.0, 1e-6).unwrap().release(counts, Noise::OpenDp).unwrap();
        assert!(kept.contains(&"big".to_string()));
        assert!(!kept.contains(&"tiny".to_string()));
    }
}
