//! Every noise draw of secretum, through OpenDP measurements (and nowhere else).
//!
//! Each function takes the exact values, the sensitivity that the caller derived from the
//! contribution bounds, and the ε it may spend. It builds the OpenDP measurement with a scale
//! calibrated so that `measurement.map(sensitivity) <= ε` (OpenDP's own privacy map, which
//! rounds conservatively), releases, and returns the noisy values with the scale used.
//! With the `use-openssl` feature, OpenDP draws its randomness from OpenSSL's CSPRNG.
//!
//! The exact path (`Noise::Exact`) exists only when the crate is built with the `test-exact`
//! feature, which only the test suite enables: the binary cannot reach it.

use opendp::accuracy::{discrete_laplacian_scale_to_accuracy, laplacian_scale_to_accuracy};
use opendp::domains::{AtomDomain, MapDomain, VectorDomain};
use opendp::error::Fallible;
use opendp::measurements::{make_laplace, make_laplace_threshold, make_private_quantile};
use opendp::measures::{Approximate, MaxDivergence};
use opendp::metrics::{AbsoluteDistance, L1Distance, L01InfDistance, SymmetricDistance};
use std::collections::HashMap;

/// Confidence level of every reported interval.
pub const ALPHA: f64 = 0.05;

/// Whether releases are noisy. Only noisy exists outside the test suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Noise {
    OpenDp,
    #[cfg(feature = "test-exact")]
    Exact,
}

fn fail(e: opendp::error::Error) -> String {
    format!("noise mechanism: {}", e.message.unwrap_or_else(|| format!("{:?}", e.variant)))
}

/// Find the smallest scale (to a relative 1e-9) with `loss(scale) <= epsilon`, starting from
/// the analytic guess `sensitivity / epsilon`. OpenDP's maps round up, so the guess may be a hair
/// too small; nudging it up keeps the guarantee exact.
fn calibrate(guess: f64, epsilon: f64, loss: impl Fn(f64) -> Fallible<f64>) -> Result<f64, String> {
    let mut scale = guess;
    for _ in 0..64 {
        if loss(scale).map_err(fail)? <= epsilon {
            return Ok(scale);
        }
        scale *= 1.0 + 1e-9_f64.max((scale * 1e-12).abs());
    }
    Err("could not calibrate the noise scale".into())
}

/// Discrete Laplace noise on a vector of integer counts whose L1 sensitivity is `sensitivity`.
/// Returns the noisy vector and the scale.
pub fn laplace_counts(values: &[i64], sensitivity: i64, epsilon: f64, noise: Noise) -> Result<(Vec<i64>, f64), String> {
    let scale = count_scale(sensitivity, epsilon)?;
    match noise {
        Noise::OpenDp => {
            let m = make_laplace::<_, _, MaxDivergence>(
                VectorDomain::new(AtomDomain::<i64>::default()),
                L1Distance::<i64>::default(),
                scale,
                None,
            )
            .map_err(fail)?;
            debug_assert!(m.map(&sensitivity).map_err(fail)? <= epsilon);
            Ok((m.invoke(&values.to_vec()).map_err(fail)?, scale))
        }
        #[cfg(feature = "test-exact")]
        Noise::Exact => Ok((values.to_vec(), scale)),
    }
}

/// The discrete Laplace scale that spends `epsilon` for an L1 sensitivity of `sensitivity`.
pub fn count_scale(sensitivity: i64, epsilon: f64) -> Result<f64, String> {
    calibrate(sensitivity as f64 / epsilon, epsilon, |scale| {
        make_laplace::<_, _, MaxDivergence>(VectorDomain::new(AtomDomain::<i64>::default()), L1Distance::<i64>::default(), scale, None)?
            .map(&sensitivity)
    })
}

/// Laplace noise on a vector of real sums whose L1 sensitivity is `sensitivity`.
pub fn laplace_sums(values: &[f64], sensitivity: f64, epsilon: f64, noise: Noise) -> Result<(Vec<f64>, f64), String> {
    let scale = sum_scale(sensitivity, epsilon)?;
    match noise {
        Noise::OpenDp => {
            let m = make_laplace::<_, _, MaxDivergence>(
                VectorDomain::new(AtomDomain::<f64>::new_non_nan()),
                L1Distance::<f64>::default(),
                scale,
                None,
            )
            .map_err(fail)?;
            Ok((m.invoke(&values.to_vec()).map_err(fail)?, scale))
        }
        #[cfg(feature = "test-exact")]
        Noise::Exact => Ok((values.to_vec(), scale)),
    }
}

/// The Laplace scale that spends `epsilon` for a real L1 sensitivity of `sensitivity`.
pub fn sum_scale(sensitivity: f64, epsilon: f64) -> Result<f64, String> {
    if sensitivity == 0.0 {
        return Ok(0.0);
    }
    calibrate(sensitivity / epsilon, epsilon, |scale| {
        make_laplace::<_, _, MaxDivergence>(VectorDomain::new(AtomDomain::<f64>::new_non_nan()), L1Distance::<f64>::default(), scale, None)?
            .map(&sensitivity)
    })
}

/// Half-width of the 95% interval of a discrete Laplace release with this scale.
/// OpenDP's bound may be floored without losing coverage.
pub fn count_accuracy(scale: f64) -> f64 {
    if scale == 0.0 { 0.0 } else { discrete_laplacian_scale_to_accuracy(scale, ALPHA).map(f64::floor).unwrap_or(f64::INFINITY) }
}

/// Half-width of the 95% interval of a continuous Laplace release with this scale.
pub fn sum_accuracy(scale: f64) -> f64 {
    if scale == 0.0 { 0.0 } else { laplacian_scale_to_accuracy(scale, ALPHA).unwrap_or(f64::INFINITY) }
}

/// Half-width at level `alpha` (used when several intervals are combined by a union bound).
pub fn sum_accuracy_at(scale: f64, alpha: f64) -> f64 {
    if scale == 0.0 { 0.0 } else { laplacian_scale_to_accuracy(scale, alpha).unwrap_or(f64::INFINITY) }
}

/// The ε a count release needs for a 95% half-width of `half_width` at this sensitivity.
pub fn epsilon_for_count_accuracy(sensitivity: f64, half_width: f64) -> Result<f64, String> {
    let scale = opendp::accuracy::accuracy_to_discrete_laplacian_scale(half_width, ALPHA).map_err(fail)?;
    Ok(sensitivity / scale)
}

/// The ε a sum release needs for a 95% half-width of `half_width` at this sensitivity.
pub fn epsilon_for_sum_accuracy(sensitivity: f64, half_width: f64) -> Result<f64, String> {
    let scale = opendp::accuracy::accuracy_to_laplacian_scale(half_width, ALPHA).map_err(fail)?;
    Ok(sensitivity / scale)
}

/// OpenDP's private quantile (exponential mechanism over `candidates`) on one group's values.
///
/// Sensitivity: one patient adds or removes at most `rows` values (symmetric distance `rows`);
/// the score of a candidate moves by at most that much per changed value, and OpenDP's map
/// gives ε = d_in · max(α, 1 − α) · 2 / scale; we calibrate the scale so that map(rows) ≤ ε.
pub fn quantile(values: &[f64], candidates: &[f64], alpha: f64, rows: u32, epsilon: f64, noise: Noise) -> Result<f64, String> {
    let build = |scale: f64| {
        make_private_quantile(
            VectorDomain::new(AtomDomain::<f64>::new_non_nan()),
            SymmetricDistance,
            MaxDivergence,
            candidates.to_vec(),
            alpha,
            scale,
        )
    };
    let d_in = rows;
    let scale = calibrate(2.0 * d_in as f64 * alpha.max(1.0 - alpha) / epsilon, epsilon, |s| build(s)?.map(&d_in))?;
    match noise {
        Noise::OpenDp => build(scale).map_err(fail)?.invoke(&values.to_vec()).map_err(fail),
        #[cfg(feature = "test-exact")]
        Noise::Exact => build(0.0).map_err(fail)?.invoke(&values.to_vec()).map_err(fail),
    }
}

/// DP partition selection: noisy per-key counts, keys under the threshold dropped.
///
/// Sensitivity: one patient touches at most `groups` keys (ℓ0), and adds at most 1 to each
/// (we count distinct patients per key), so ℓ1 ≤ `groups` and ℓ∞ = 1. OpenDP's noise-threshold
/// map returns (ε, δ): the scale is calibrated for ε, then the threshold is raised until δ fits.
pub fn select_partitions(
    counts: HashMap<String, i64>,
    groups: u32,
    epsilon: f64,
    delta: f64,
    noise: Noise,
) -> Result<(HashMap<String, i64>, f64), String> {
    let domain = || MapDomain::new(AtomDomain::<String>::default(), AtomDomain::<i64>::default());
    let metric = || -> L01InfDistance<AbsoluteDistance<i64>> { opendp::metrics::L0PInfDistance(AbsoluteDistance::<i64>::default()) };
    let d_in = (groups as u32, groups as i64, 1i64);
    let build =
        |scale: f64, threshold: i64| make_laplace_threshold::<_, _, Approximate<MaxDivergence>>(domain(), metric(), scale, threshold, None);
    let scale = calibrate(groups as f64 / epsilon, epsilon, |s| Ok(build(s, i64::MAX / 4)?.map(&d_in)?.0))?;
    // Smallest threshold whose δ fits: δ falls as the threshold rises.
    let fits = |t: i64| -> Result<bool, String> { Ok(build(scale, t).map_err(fail)?.map(&d_in).map_err(fail)?.1 <= delta) };
    let (mut lo, mut hi) = (1i64, 2i64);
    while !fits(hi)? {
        lo = hi;
        hi = hi.checked_mul(2).ok_or("no threshold satisfies δ")?;
    }
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if fits(mid)? { hi = mid } else { lo = mid }
    }
    let threshold = hi;
    match noise {
        Noise::OpenDp => Ok((build(scale, threshold).map_err(fail)?.invoke(&counts).map_err(fail)?, scale)),
        #[cfg(feature = "test-exact")]
        Noise::Exact => Ok((counts.into_iter().filter(|(_, c)| *c >= threshold).collect(), scale)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calibrated_scales_spend_at_most_epsilon() {
        for (sens, eps) in [(1, 1.0), (10, 0.5), (20, 0.01)] {
            let s = count_scale(sens, eps).unwrap();
            assert!((s - sens as f64 / eps).abs() / s < 1e-6, "{s}");
            let s = sum_scale(sens as f64 * 3.5, eps).unwrap();
            assert!((s - sens as f64 * 3.5 / eps).abs() / s < 1e-6, "{s}");
        }
    }

    #[test]
    fn accuracy_matches_laplace_tail() {
        // P(|L| > a) = exp(-a / b) = 0.05  =>  a = b ln 20.
        assert!((sum_accuracy(2.0) - 2.0 * 20f64.ln()).abs() < 1e-9);
        let eps = epsilon_for_sum_accuracy(1.0, 1.0 * 20f64.ln()).unwrap();
        assert!((eps - 1.0).abs() < 1e-9);
    }

    #[test]
    fn quantile_lands_near_the_median_with_generous_budget() {
        let values: Vec<f64> = (0..1000).map(|i| (i % 100) as f64).collect();
        let candidates: Vec<f64> = (0..=100).map(f64::from).collect();
        let q = quantile(&values, &candidates, 0.5, 1, 10.0, Noise::OpenDp).unwrap();
        assert!((40.0..=60.0).contains(&q), "{q}");
    }

    #[test]
    fn partition_selection_drops_small_keys() {
        let counts = HashMap::from([("big".to_string(), 10_000), ("tiny".to_string(), 1)]);
        let (kept, _) = select_partitions(counts, 1, 1.0, 1e-6, Noise::OpenDp).unwrap();
        assert!(kept.contains_key("big"));
        assert!(!kept.contains_key("tiny"));
    }
}
