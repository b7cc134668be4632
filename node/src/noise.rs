//! Noise from OpenDP's discrete samplers (secure randomness through OpenSSL). The measurement is
//! built from the domain, metric and scale, and its own privacy map is checked against the cost:
//! we never trust our own arithmetic alone.

use opendp::domains::{AtomDomain, VectorDomain};
use opendp::measurements::{make_gaussian, make_laplace};
use opendp::measures::{MaxDivergence, ZeroConcentratedDivergence};
use opendp::metrics::{L1Distance, L2Distance};
use policies::sensitivity::{Measure, MeasureCost};

#[derive(Debug, thiserror::Error)]
pub enum NoiseError {
    #[error("OpenDP: {0}")]
    OpenDp(String),
    #[error(
        "OpenDP's privacy map gives a loss of {loss} for sensitivity {sensitivity}, above the declared cost {cost}; refusing to release"
    )]
    OverCost {
        loss: f64,
        sensitivity: f64,
        cost: f64,
    },
}

fn odp(e: opendp::error::Error) -> NoiseError {
    NoiseError::OpenDp(e.to_string())
}

/// The privacy loss OpenDP certifies for one release of `measure`: ρ (zCDP) or ε (pure DP).
pub fn certified_loss(measure: &Measure) -> Result<f64, NoiseError> {
    let domain = VectorDomain::new(AtomDomain::<i64>::default());
    match measure.cost {
        MeasureCost::Rho(_) => {
            let m = make_gaussian::<_, _, ZeroConcentratedDivergence>(
                domain,
                L2Distance::<f64>::default(),
                measure.scale(),
                None,
            )
            .map_err(odp)?;
            m.map(&measure.l2()).map_err(odp)
        }
        MeasureCost::Epsilon(_) => {
            let m = make_laplace::<_, _, MaxDivergence>(
                domain,
                L1Distance::<i64>::default(),
                measure.scale(),
                None,
            )
            .map_err(odp)?;
            m.map(&measure.l1()).map_err(odp)
        }
    }
}

/// Noise for every measure of `cells`, in the order of `measures` (a measure the cells lack is
/// drawn over no cells). Synchronous, like `add_noise`.
pub fn noisy_measures(
    measures: &[Measure],
    cells: &crate::evaluate::Cells,
) -> Result<Vec<Vec<i64>>, NoiseError> {
    measures
        .iter()
        .map(|m| add_noise(m, cells.measure(&m.name).unwrap_or_default()))
        .collect()
}

/// Add noise to every cell of one measure. Synchronous on purpose: OpenDP measurements are not
/// `Send`, so callers run this in `spawn_blocking`.
pub fn add_noise(measure: &Measure, exact: &[i64]) -> Result<Vec<i64>, NoiseError> {
    let (cost, sensitivity) = match measure.cost {
        MeasureCost::Rho(r) => (r, measure.l2()),
        MeasureCost::Epsilon(e) => (e, measure.l1() as f64),
    };
    let loss = certified_loss(measure)?;
    if loss > cost {
        return Err(NoiseError::OverCost {
            loss,
            sensitivity,
            cost,
        });
    }
    let domain = VectorDomain::new(AtomDomain::<i64>::default());
    let input = exact.to_vec();
    match measure.cost {
        MeasureCost::Rho(_) => make_gaussian::<_, _, ZeroConcentratedDivergence>(
            domain,
            L2Distance::<f64>::default(),
            measure.scale(),
            None,
        )
        .and_then(|m| m.invoke(&input))
        .map_err(odp),
        MeasureCost::Epsilon(_) => make_laplace::<_, _, MaxDivergence>(
            domain,
            L1Distance::<i64>::default(),
            measure.scale(),
            None,
        )
        .and_then(|m| m.invoke(&input))
        .map_err(odp),
    }
}

/// One node's share of distributed discrete Gaussian noise: `sigma` in the scaled units of
/// `exact`, with OpenDP's privacy map of the share alone at L2 sensitivity `l2` (its local ρ).
/// Synchronous, like [`add_noise`].
pub fn gaussian_share(sigma: f64, l2: f64, exact: &[i64]) -> Result<(Vec<i64>, f64), NoiseError> {
    let m = make_gaussian::<_, _, ZeroConcentratedDivergence>(
        VectorDomain::new(AtomDomain::<i64>::default()),
        L2Distance::<f64>::default(),
        sigma,
        None,
    )
    .map_err(odp)?;
    let local = m.map(&l2).map_err(odp)?;
    let noisy = m.invoke(&exact.to_vec()).map_err(odp)?;
    Ok((noisy, local))
}
