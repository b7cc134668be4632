//! A node's secure answer: its bounded cells, scaled by each measure's public granularity, plus its
//! *share* of the discrete Gaussian noise (OpenDP's sampler; the sum of any n − t honest shares
//! meets the indicator's ρ by the distributed discrete Gaussian bound), sharded with Prio3 into a
//! leader share for the coordinator and a share sealed to the helper, and signed. No cell leaves
//! the node in the clear; the answer's batch holds the public keys only.

use crate::config::SecureConfig;
use crate::evaluate::Cells;
use crate::noise::{self, NoiseError};
use policies::governance::SigningKey;
use policies::sensitivity::{Measure, MeasureCost};
use policies::wire::{
    KeyId, MeasureNoise, ReportBinding, SecureMeasure, SecureRequest, SecureShares,
};
use secagg::accounting::{self, PlanError, SharePlan};
use secagg::floors::FloorError;
use secagg::report::ReportError;
use secagg::seal::HelperPublicKey;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
#[error("secure aggregation key {file}: {message}")]
pub struct KeyError {
    pub file: PathBuf,
    pub message: String,
}

/// The helper's public keys (from this node's own configuration: the current one, and during a
/// rotation the next) and the node's signing key.
pub struct SecureKeys {
    pub helpers: Vec<(KeyId, HelperPublicKey)>,
    pub signer: SigningKey,
}

impl SecureKeys {
    pub fn load(cfg: &SecureConfig) -> Result<Option<SecureKeys>, KeyError> {
        let (Some(helper), Some(signer)) = (&cfg.helper_key, &cfg.signing_key) else {
            return Ok(None);
        };
        let read = |file: &PathBuf| {
            std::fs::read_to_string(file).map_err(|e| KeyError {
                file: file.clone(),
                message: e.to_string(),
            })
        };
        let bad = |file: &PathBuf, e: &dyn std::fmt::Display| KeyError {
            file: file.clone(),
            message: e.to_string(),
        };
        let mut helpers = Vec::new();
        for file in std::iter::once(helper).chain(&cfg.helper_next_key) {
            let key = HelperPublicKey::from_hex(&read(file)?).map_err(|e| bad(file, &e))?;
            helpers.push((key.key_id(), key));
        }
        Ok(Some(SecureKeys {
            helpers,
            signer: SigningKey::from_text(&read(signer)?).map_err(|e| bad(signer, &e))?,
        }))
    }

    /// The ids of the helper keys this node seals to, current first.
    pub fn helper_key_ids(&self) -> Vec<KeyId> {
        self.helpers.iter().map(|(id, _)| *id).collect()
    }

    fn helper(&self, id: KeyId) -> Result<&HelperPublicKey, SecureError> {
        self.helpers
            .iter()
            .find(|(k, _)| *k == id)
            .map(|(_, key)| key)
            .ok_or_else(|| SecureError::UnknownHelperKey {
                requested: id,
                known: self.helper_key_ids(),
            })
    }
}

fn key_list(ids: &[KeyId]) -> String {
    ids.iter()
        .map(KeyId::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[derive(Debug, thiserror::Error)]
pub enum SecureError {
    #[error(
        "this node is not configured for secure aggregation (secure.helper_key and secure.signing_key); it answers per-node requests only"
    )]
    NotConfigured,
    /// Only this node's configuration decides which helper keys it trusts.
    #[error(
        "the request names helper key {requested}, which is not in this node's configuration (secure.helper_key, secure.helper_next_key: {}); a rotated helper key reaches a node from the helper's operator, never from the coordinator",
        key_list(known)
    )]
    UnknownHelperKey { requested: KeyId, known: Vec<KeyId> },
    #[error(
        "a secure run with {bits}-bit entries is not possible: entries are 2 to {max} bits",
        max = secagg::vdaf::MAX_BITS
    )]
    BadWidth { bits: u32 },
    /// The node's floors (`secure.min_honest`, `secure.max_missing_share`), or an impossible n.
    #[error("{0}")]
    Floor(#[from] FloorError),
    #[error(
        "indicator '{0}' is priced in pure ε (discrete Laplace); secure aggregation shares discrete Gaussian noise under ρ only"
    )]
    PureDp(String),
    #[error("noise share: {0}")]
    Plan(#[from] PlanError),
    /// Every figure here is public: the node's configured unit bound, the measure's per-unit
    /// bound, the noise plan's σ and granularity, and the width asked. Nothing read from records.
    #[error(
        "measure '{measure}': a node of up to {max_units} units (secure.max_units) has cells within ±{cell_bound} ({per_cell} per unit), which with this run's noise share need {needed} entries; the request asks {bits} bits"
    )]
    TooWide {
        measure: String,
        max_units: u64,
        per_cell: i64,
        cell_bound: i64,
        sigma: f64,
        granularity: i64,
        /// "N-bit" or "more than 64-bit".
        needed: String,
        bits: u32,
    },
    #[error(transparent)]
    Noise(#[from] NoiseError),
    #[error("report: {0}")]
    Report(#[from] ReportError),
}

impl SecureError {
    pub fn code(&self) -> &'static str {
        match self {
            SecureError::NotConfigured => "secure_not_configured",
            SecureError::UnknownHelperKey { .. } => "unknown_helper_key",
            SecureError::BadWidth { .. } => "invalid_request",
            SecureError::Floor(FloorError::Impossible { .. }) => "invalid_request",
            SecureError::Floor(FloorError::TooManyMissing { .. }) => "too_many_missing",
            SecureError::Floor(FloorError::TooFewHonest { .. }) => "too_few_honest_nodes",
            SecureError::PureDp(_) => "secure_needs_rho",
            SecureError::Plan(_) => "noise_failed",
            SecureError::TooWide { .. } => "report_too_wide",
            SecureError::Noise(_) => "noise_failed",
            SecureError::Report(_) => "report_failed",
        }
    }

    /// Refusals of the request as asked (nothing spent); the rest are the node's own failures.
    pub fn is_refusal(&self) -> bool {
        match self {
            SecureError::NotConfigured
            | SecureError::UnknownHelperKey { .. }
            | SecureError::BadWidth { .. }
            | SecureError::Floor(_)
            | SecureError::PureDp(_)
            | SecureError::TooWide { .. } => true,
            SecureError::Plan(_) | SecureError::Noise(_) | SecureError::Report(_) => false,
        }
    }
}

/// Every measure's noise share for this run, decided before anything is spent.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub request: SecureRequest,
    /// The helper key the report is sealed to: the one the request names, or the current one.
    pub helper_key_id: KeyId,
    pub bits: u32,
    /// The public bound on this node's units the widths were planned for.
    pub max_units: u64,
    /// Each measure, its noise share and the public bound its cells are clamped into.
    pub plans: Vec<(Measure, SharePlan, i64)>,
}

/// Checks the request against this node's floor and plans each measure's share; then checks that
/// the public bound of every cell (`secure.max_units` × the measure's per-unit bound) with its
/// noise fits the entry width. All before the spend, and from public facts alone: `dim` is the
/// size of the public key set, never the number of cells the records fill.
/// `helper_keys` are the ids of the helper keys this node is configured with, current first
/// (`None`: not configured for secure aggregation).
pub fn prepare(
    indicator: &str,
    cfg: &SecureConfig,
    helper_keys: Option<&[KeyId]>,
    request: &SecureRequest,
    measures: &[Measure],
    dim: usize,
) -> Result<Prepared, SecureError> {
    let Some(helper_keys) = helper_keys else {
        return Err(SecureError::NotConfigured);
    };
    let SecureRequest {
        nodes,
        max_missing,
        bits,
        helper_key_id,
    } = *request;
    let helper_key_id = match (helper_key_id, helper_keys.first()) {
        (Some(asked), _) if helper_keys.contains(&asked) => asked,
        (None, Some(current)) => *current,
        (Some(asked), _) => {
            return Err(SecureError::UnknownHelperKey {
                requested: asked,
                known: helper_keys.to_vec(),
            });
        }
        (None, None) => return Err(SecureError::NotConfigured),
    };
    // The floors first: an absurd n is refused before any planning (linear in n) starts.
    cfg.floors().check(nodes, max_missing)?;
    if !(2..=secagg::vdaf::MAX_BITS).contains(&bits) {
        return Err(SecureError::BadWidth { bits });
    }
    let honest = request.honest();
    let mut plans = Vec::with_capacity(measures.len());
    for m in measures {
        let rho = match m.cost {
            MeasureCost::Rho(r) => r,
            MeasureCost::Epsilon(_) => return Err(SecureError::PureDp(indicator.to_string())),
        };
        let plan = accounting::plan(
            m.l1(),
            m.l2(),
            dim as u64,
            rho,
            honest as u64,
            cfg.max_local_rho,
        )?;
        let cell_bound = accounting::cell_bound(m.per_cell, cfg.max_units);
        let needed = accounting::entry_bits(cell_bound, &plan, secagg::vdaf::MAX_BITS);
        if needed.is_none_or(|needed| needed > bits) {
            return Err(SecureError::TooWide {
                measure: m.name.clone(),
                max_units: cfg.max_units,
                per_cell: m.per_cell,
                cell_bound,
                sigma: plan.sigma,
                granularity: plan.granularity,
                needed: match needed {
                    Some(b) => format!("{b}-bit"),
                    None => format!("more than {}-bit", secagg::vdaf::MAX_BITS),
                },
                bits,
            });
        }
        plans.push((m.clone(), plan, cell_bound));
    }
    Ok(Prepared {
        request: *request,
        helper_key_id,
        bits,
        max_units: cfg.max_units,
        plans,
    })
}

/// What the node's answer states beside its report.
pub struct SecureAnswer {
    pub measures: Vec<MeasureNoise>,
    pub shares: SecureShares,
}

/// Draws the noise shares and makes the signed, sealed report. Synchronous (OpenDP measurements
/// are not `Send`): run it in `spawn_blocking`.
pub fn answer(
    prepared: &Prepared,
    keys: &SecureKeys,
    mut binding: ReportBinding,
    cells: &Cells,
    max_local_rho: Option<f64>,
    corrupt: bool,
) -> Result<SecureAnswer, SecureError> {
    let mut values = Vec::new();
    let mut measures = Vec::new();
    let mut secure_measures = Vec::new();
    for (m, plan, cell_bound) in &prepared.plans {
        // Clamped into the public range before the noise: post-processing of a bounded sum, so
        // the sensitivity is unchanged, and no cell can ever outgrow the width planned for it.
        let scaled: Vec<i64> = cells
            .measure(&m.name)
            .unwrap_or_default()
            .iter()
            .map(|v| {
                (*v).clamp(-cell_bound, *cell_bound)
                    .saturating_mul(plan.granularity)
            })
            .collect();
        let l2 = m.l2() * plan.granularity as f64;
        let (noisy, certified) = noise::gaussian_share(plan.sigma, l2, &scaled)?;
        // OpenDP's own map of this share must agree with the plan, and honour the ceiling.
        let ceiling = max_local_rho.unwrap_or(f64::INFINITY).min(plan.local_rho);
        if certified > ceiling * (1.0 + 1e-6) {
            return Err(NoiseError::OverCost {
                loss: certified,
                sensitivity: l2,
                cost: ceiling,
            }
            .into());
        }
        values.extend(noisy);
        measures.push(MeasureNoise {
            column: m.name.clone(),
            mechanism: secagg::MECHANISM.to_string(),
            scale: plan.sigma / plan.granularity as f64,
            variance: plan.share_variance,
            per_cell_bound: m.per_cell,
            cells_per_unit: m.cells_per_unit,
            l1_bound: m.l1(),
            l2_bound: m.l2(),
        });
        secure_measures.push(SecureMeasure {
            column: m.name.clone(),
            granularity: plan.granularity,
            sigma: plan.sigma,
            rho: plan.rho,
            local_rho: certified,
        });
    }
    binding.bits = prepared.bits;
    binding.length = values.len() as u32;
    binding.granularity = prepared
        .plans
        .iter()
        .map(|(_, p, _)| p.granularity)
        .collect();
    binding.nodes = prepared.request.nodes;
    binding.max_missing = prepared.request.max_missing;
    binding.helper_key_id = Some(prepared.helper_key_id);
    let mut shares = secagg::report::make(
        binding,
        &values,
        secure_measures,
        keys.helper(prepared.helper_key_id)?,
        &keys.signer,
    )?;
    shares.max_units = prepared.max_units;
    // Fault injection for tests only (`testing.corrupt_secure_report`).
    if corrupt && let Some(b) = shares.leader_share.as_bytes().get(8).copied() {
        let flipped = if b == b'0' { "1" } else { "0" };
        shares.leader_share.replace_range(8..9, flipped);
    }
    Ok(SecureAnswer { measures, shares })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count_measure(rho: f64) -> Measure {
        Measure {
            name: "count".into(),
            per_cell: 1,
            cells_per_unit: 4,
            cost: MeasureCost::Rho(rho),
        }
    }

    fn cfg() -> SecureConfig {
        SecureConfig::default()
    }

    const KEYS: Option<&[KeyId]> = Some(&[KeyId([1; 8]), KeyId([2; 8])]);

    #[test]
    fn the_shares_of_n_minus_t_nodes_carry_the_declared_national_variance() {
        // Ten honest nodes, ρ = 0.01, L2 = 2: the central discrete Gaussian has σ² = 200.
        let m = count_measure(0.01);
        let req = SecureRequest {
            nodes: 11,
            max_missing: 1,
            bits: 32,
            helper_key_id: None,
        };
        let p = prepare("x", &cfg(), KEYS, &req, std::slice::from_ref(&m), 4).expect("plan");
        let plan = p.plans[0].1;
        assert_eq!(plan.granularity, 1);
        let declared = 10.0 * plan.share_variance;
        assert!((declared - 200.0).abs() < 0.3, "{declared}");
        let trials = 2000;
        let mut sum_sq = 0.0;
        let mut n = 0.0;
        for _ in 0..trials {
            let mut national = vec![0i64; 4];
            for _ in 0..10 {
                let (noisy, local) =
                    noise::gaussian_share(plan.sigma, m.l2(), &[0, 0, 0, 0]).expect("share");
                assert!((local - plan.local_rho).abs() <= plan.local_rho * 1e-6);
                for (a, b) in national.iter_mut().zip(noisy) {
                    *a += b;
                }
            }
            for v in national {
                sum_sq += (v * v) as f64;
                n += 1.0;
            }
        }
        let empirical = sum_sq / n;
        // 8,000 draws: the sample variance's standard error is 200·√(2/8000) ≈ 3.2; allow 5 of
        // them. Shares drawn at the central σ (not divided by n − t) would give 2,000.
        assert!(
            (empirical - declared).abs() < 16.0,
            "empirical {empirical}, declared {declared}"
        );
    }

    #[test]
    fn with_one_honest_node_the_distributed_bound_is_opendps_own_map() {
        let m = count_measure(0.05);
        let req = SecureRequest {
            nodes: 1,
            max_missing: 0,
            bits: 32,
            helper_key_id: None,
        };
        let single = SecureConfig {
            min_honest: 1,
            ..cfg()
        };
        let p = prepare("x", &single, KEYS, &req, std::slice::from_ref(&m), 4).expect("plan");
        let plan = p.plans[0].1;
        let (_, opendp) = noise::gaussian_share(plan.sigma, m.l2(), &[0; 4]).expect("share");
        assert!(
            (plan.rho - opendp).abs() <= 1e-12 * opendp,
            "{plan:?} vs {opendp}"
        );
        assert!(
            plan.rho <= 0.05 && plan.rho > 0.05 * (1.0 - 1e-6),
            "{plan:?}"
        );
        // ... and the node's per-node scale for the same cost within the nudge.
        assert!((plan.sigma - m.scale()).abs() <= 1e-6 * m.scale());
    }

    #[test]
    fn requests_the_node_cannot_serve_safely_are_refused_before_any_spend() {
        let m = count_measure(0.01);
        let req = |nodes, max_missing| SecureRequest {
            nodes,
            max_missing,
            bits: 32,
            helper_key_id: None,
        };
        let ms = std::slice::from_ref(&m);
        assert!(matches!(
            prepare("x", &cfg(), None, &req(11, 1), ms, 4),
            Err(SecureError::NotConfigured)
        ));
        assert!(matches!(
            prepare("x", &cfg(), KEYS, &req(3, 3), ms, 4),
            Err(SecureError::Floor(FloorError::Impossible { .. }))
        ));
        // The floors hold whatever the coordinator declares: too few honest nodes, t above the
        // ceiling (t = n − 2 with one colluder would expose this node at 2ρ), an absurd n.
        assert!(matches!(
            prepare("x", &cfg(), KEYS, &req(3, 1), ms, 4),
            Err(SecureError::Floor(FloorError::TooFewHonest {
                honest: 2,
                floor: 3,
                ..
            }))
        ));
        let refused = prepare("x", &cfg(), KEYS, &req(12, 10), ms, 4).expect_err("ceiling");
        assert!(matches!(
            refused,
            SecureError::Floor(FloorError::TooManyMissing { ceiling: 4, .. })
        ));
        assert_eq!(refused.code(), "too_many_missing");
        assert!(refused.is_refusal());
        assert!(matches!(
            prepare("x", &cfg(), KEYS, &req(u32::MAX, 1), ms, 4),
            Err(SecureError::Floor(FloorError::Impossible { .. }))
        ));
        let laplace = Measure {
            cost: MeasureCost::Epsilon(1.0),
            ..m.clone()
        };
        assert!(matches!(
            prepare("x", &cfg(), KEYS, &req(11, 1), &[laplace], 4),
            Err(SecureError::PureDp(_))
        ));
        let narrow = SecureRequest {
            bits: 8,
            ..req(11, 1)
        };
        let refused = prepare("x", &cfg(), KEYS, &narrow, ms, 4).expect_err("too narrow");
        assert!(matches!(refused, SecureError::TooWide { bits: 8, .. }));
        // Only public figures: the configured unit bound, the per-unit bound, their product.
        let text = refused.to_string();
        let units = cfg().max_units;
        assert!(text.contains(&format!("up to {units} units")), "{text}");
        assert!(text.contains(&format!("±{units} (1 per unit)")), "{text}");
        let too_wide = SecureRequest {
            bits: 65,
            ..req(11, 1)
        };
        assert!(matches!(
            prepare("x", &cfg(), KEYS, &too_wide, ms, 4),
            Err(SecureError::BadWidth { bits: 65 })
        ));
        assert!(prepare("x", &cfg(), KEYS, &req(11, 1), ms, 4).is_ok());
        // Sealed to the key the request names if this node holds it, else to its current key;
        // a key the node was not given by the helper's operator is refused.
        let named = |id| SecureRequest {
            helper_key_id: Some(KeyId(id)),
            ..req(11, 1)
        };
        let next = prepare("x", &cfg(), KEYS, &named([2; 8]), ms, 4).expect("next key");
        assert_eq!(next.helper_key_id, KeyId([2; 8]));
        let current = prepare("x", &cfg(), KEYS, &req(11, 1), ms, 4).expect("current key");
        assert_eq!(current.helper_key_id, KeyId([1; 8]));
        let refused = prepare("x", &cfg(), KEYS, &named([3; 8]), ms, 4).expect_err("unknown");
        assert_eq!(refused.code(), "unknown_helper_key");
        assert!(refused.is_refusal());
        assert!(
            refused.to_string().contains("0303030303030303"),
            "{refused}"
        );
    }

    #[test]
    fn a_local_ceiling_is_met_by_adding_more_than_the_share() {
        let m = count_measure(0.01);
        let req = SecureRequest {
            nodes: 11,
            max_missing: 1,
            bits: 32,
            helper_key_id: None,
        };
        let capped = SecureConfig {
            max_local_rho: Some(0.02),
            ..cfg()
        };
        let free = prepare("x", &cfg(), KEYS, &req, std::slice::from_ref(&m), 4).expect("plan");
        let p = prepare("x", &capped, KEYS, &req, std::slice::from_ref(&m), 4).expect("plan");
        let (free, plan) = (free.plans[0].1, p.plans[0].1);
        assert!((free.local_rho - 0.1).abs() < 1e-3, "{free:?}");
        assert!(plan.local_rho <= 0.02 * (1.0 + 1e-6), "{plan:?}");
        // OpenDP's own map of the share agrees with the plan.
        let (_, certified) = noise::gaussian_share(plan.sigma, m.l2(), &[0; 4]).expect("share");
        assert!((certified - plan.local_rho).abs() <= plan.local_rho * 1e-6);
        // The national variance grows accordingly: five times the share at a fifth of the ρ.
        assert!((plan.share_variance / free.share_variance - 5.0).abs() < 0.01);
    }
}
