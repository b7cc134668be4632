//! `stroom synth`: deterministic synthetic records per provider, following the sourced base rates
//! in DESIGN.md / DOMAIN.md (stay lengths, sex and age mix, heavily skewed seclusions, durations,
//! transfers, incidents, education), plus the experience panel's responses.
//!
//! Every provider draws from its own seeded generator, so output is identical for a given seed
//! whatever the number of threads. Rows stream to Parquet in bounded batches; `--scale` multiplies
//! volumes for benchmarks without holding a table in memory.

pub mod postgres;
mod writer;

use anyhow::{Context, Result};
use chrono::NaiveDate;
use policies::Period;
use policies::cdm;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Gamma, LogNormal, Poisson};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use writer::{TableWriter, V};

/// Quarters the synthetic records cover completely (admissions start half a year earlier so that
/// the first covered quarter already has its long stayers).
pub const COVERAGE: &str = "2022Q1:2024Q4";
pub const PANEL_NODE: &str = "PANEL";
const SIM_START: (i32, u32, u32) = (2021, 7, 1);
const SIM_END: (i32, u32, u32) = (2024, 12, 31);
/// Admissions per provider per year at scale 1: ~11 × 90 ≈ 1,000 placements a year nationally and
/// 555–900 unique youths per quarter, as observed.
const ADMISSIONS_PER_YEAR: f64 = 90.0;
const READMISSION_SHARE: f64 = 0.15;
const PANEL_RESPONDENTS_PER_QUARTER: f64 = 300.0;

#[derive(Debug, Clone)]
pub struct SynthOptions {
    pub out: PathBuf,
    pub providers: usize,
    pub seed: u64,
    pub scale: f64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Manifest {
    pub providers: Vec<String>,
    pub panel_node: String,
    pub seed: u64,
    pub scale: f64,
    pub coverage: String,
    pub rows: BTreeMap<String, BTreeMap<String, u64>>,
}

pub fn provider_id(i: usize) -> String {
    format!("P{:02}", i + 1)
}

fn epoch_days(y: i32, m: u32, d: u32) -> i32 {
    let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).unwrap_or_default();
    NaiveDate::from_ymd_opt(y, m, d)
        .map(|x| (x - epoch).num_days() as i32)
        .unwrap_or(0)
}

fn date_of(days: i32) -> NaiveDate {
    NaiveDate::from_ymd_opt(1970, 1, 1).unwrap_or_default() + chrono::Duration::days(days as i64)
}

const MICROS_PER_DAY: i64 = 86_400_000_000;
const MICROS_PER_MINUTE: i64 = 60_000_000;

fn pick<'a, R: Rng>(rng: &mut R, items: &[(&'a str, f64)]) -> &'a str {
    let total: f64 = items.iter().map(|(_, w)| w).sum();
    let mut x = rng.random::<f64>() * total;
    for (v, w) in items {
        if x < *w {
            return v;
        }
        x -= w;
    }
    items.last().map(|(v, _)| *v).unwrap_or("")
}

fn poisson<R: Rng>(rng: &mut R, lambda: f64) -> u64 {
    if lambda <= 0.0 {
        return 0;
    }
    Poisson::new(lambda)
        .map(|p| p.sample(rng) as u64)
        .unwrap_or(0)
}

/// Negative binomial via its gamma–Poisson mixture: mean `mean`, dispersion `k` (small k = skewed).
fn neg_binomial<R: Rng>(rng: &mut R, mean: f64, k: f64) -> u64 {
    if mean <= 0.0 {
        return 0;
    }
    let lambda = Gamma::new(k, mean / k)
        .map(|g| g.sample(rng))
        .unwrap_or(0.0);
    poisson(rng, lambda)
}

fn lognormal<R: Rng>(rng: &mut R, median: f64, p95: f64) -> f64 {
    let sigma = (p95 / median).ln() / 1.645;
    LogNormal::new(median.ln(), sigma)
        .map(|d| d.sample(rng))
        .unwrap_or(median)
}

fn hex_id<R: Rng>(rng: &mut R) -> String {
    format!("{:016x}", rng.random::<u64>())
}

struct Writers {
    youth: TableWriter,
    stay: TableWriter,
    mv: TableWriter,
    measure: TableWriter,
    incident: TableWriter,
    unit: TableWriter,
    care_plan: TableWriter,
    education: TableWriter,
}

fn table(name: &str) -> Result<cdm::TableDef> {
    cdm::table(name).with_context(|| format!("data model lacks table {name}"))
}

impl Writers {
    fn create(dir: &Path) -> Result<Writers> {
        Ok(Writers {
            youth: TableWriter::create(dir, table("youth")?)?,
            stay: TableWriter::create(dir, table("stay")?)?,
            mv: TableWriter::create(dir, table("move")?)?,
            measure: TableWriter::create(dir, table("restrictive_measure")?)?,
            incident: TableWriter::create(dir, table("incident")?)?,
            unit: TableWriter::create(dir, table("unit")?)?,
            care_plan: TableWriter::create(dir, table("care_plan")?)?,
            education: TableWriter::create(dir, table("education")?)?,
        })
    }

    fn finish(self) -> Result<BTreeMap<String, u64>> {
        let mut rows = BTreeMap::new();
        for (name, w) in [
            ("youth", self.youth),
            ("stay", self.stay),
            ("move", self.mv),
            ("restrictive_measure", self.measure),
            ("incident", self.incident),
            ("unit", self.unit),
            ("care_plan", self.care_plan),
            ("education", self.education),
        ] {
            rows.insert(name.to_string(), w.finish()?);
        }
        Ok(rows)
    }
}

struct Unit {
    id: String,
}

/// Mean seclusions per month in care: about 3 per stay (mean stay 6.4 months) in 2019–20, falling
/// to about 0.6 per stay by 2025 (DOMAIN.md).
fn seclusions_per_month(day: i32) -> f64 {
    let start = epoch_days(2020, 1, 1) as f64;
    let end = epoch_days(2025, 1, 1) as f64;
    let t = ((day as f64 - start) / (end - start)).clamp(0.0, 1.0);
    (3.0 - 2.4 * t) / 6.4
}

fn generate_provider(
    dir: &Path,
    provider: &str,
    index: usize,
    seed: u64,
    scale: f64,
) -> Result<BTreeMap<String, u64>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut rng =
        ChaCha8Rng::seed_from_u64(seed ^ ((index as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)));
    let mut w = Writers::create(dir)?;
    let size = 0.6 + 0.8 * rng.random::<f64>();

    let n_units = rng.random_range(4..=8);
    let mut units = Vec::new();
    for u in 0..n_units {
        let id = format!("{provider}-U{}", u + 1);
        let unit_type = pick(
            &mut rng,
            &[
                ("groep", 0.5),
                ("kleinschalig", 0.25),
                ("crisis", 0.1),
                ("intensief", 0.15),
            ],
        );
        let max = match unit_type {
            "kleinschalig" => rng.random_range(3..=6),
            "intensief" => rng.random_range(3..=6),
            "crisis" => rng.random_range(6..=8),
            _ => rng.random_range(7..=10),
        };
        let safe_room = rng.random::<f64>() < 0.7;
        w.unit
            .row(&[V::S(&id), V::S(unit_type), V::I(max), V::B(safe_room)])?;
        units.push(Unit { id });
    }

    let sim_start = epoch_days(SIM_START.0, SIM_START.1, SIM_START.2);
    let sim_end = epoch_days(SIM_END.0, SIM_END.1, SIM_END.2);
    let years = (sim_end - sim_start) as f64 / 365.25;
    let youths =
        (ADMISSIONS_PER_YEAR * size * scale * years / (1.0 + READMISSION_SHARE)).round() as u64;
    let stay_months = LogNormal::new(1.30, 1.06).map_err(|e| anyhow::anyhow!("{e}"))?;
    let ages = [
        (12, 0.03),
        (13, 0.10),
        (14, 0.22),
        (15, 0.25),
        (16, 0.23),
        (17, 0.17),
    ];
    let mut counters = [0u64; 6];
    let mut next_id = |i: usize, prefix: &str| {
        counters[i] += 1;
        format!("{provider}-{prefix}{}", counters[i])
    };

    for _ in 0..youths {
        let pid = hex_id(&mut rng);
        let sex = pick(&mut rng, &[("M", 0.57), ("V", 0.42), ("X", 0.01)]);
        let region = cdm::JEUGDREGIO[rng.random_range(0..cdm::JEUGDREGIO.len())];
        let mut admission = rng.random_range(sim_start..=sim_end);
        let age_pick = rng.random::<f64>();
        let mut acc = 0.0;
        let mut age = 15;
        for (a, p) in ages {
            acc += p;
            if age_pick < acc {
                age = a;
                break;
            }
        }
        let adm_date = date_of(admission);
        let birth = NaiveDate::from_ymd_opt(
            chrono::Datelike::year(&adm_date) - age,
            rng.random_range(1..=12),
            1,
        )
        .unwrap_or(adm_date);
        let birth_days = (birth - date_of(0)).num_days() as i32;
        w.youth
            .row(&[V::S(&pid), V::D(birth_days), V::S(sex), V::S(region)])?;
        // Per-youth propensity: the same youth tends to be secluded across stays.
        let propensity = Gamma::new(0.2, 1.0 / 0.2)
            .map(|g| g.sample(&mut rng))
            .unwrap_or(1.0);

        loop {
            let months: f64 = stay_months.sample(&mut rng);
            let length = (months * 30.44).round().max(1.0) as i32;
            let discharge = admission + length;
            let discharged = discharge <= sim_end;
            let last_day = if discharged { discharge } else { sim_end };
            let months_in_care = (last_day - admission + 1) as f64 / 30.44;
            let stay_id = next_id(0, "S");
            let unit = &units[rng.random_range(0..units.len())];
            let legal = pick(
                &mut rng,
                &[
                    ("machtiging", 0.75),
                    ("spoedmachtiging", 0.2),
                    ("voorwaardelijke_machtiging", 0.05),
                ],
            );
            let crisis = rng.random::<f64>() < 0.2;
            let tls = (rng.random::<f64>() < 0.8).then(|| admission - rng.random_range(7..60));
            let reason = discharged.then(|| cdm::DISCHARGE_REASON[rng.random_range(0..5)]);
            let destination = discharged.then(|| {
                pick(
                    &mut rng,
                    &[
                        ("thuis", 0.35),
                        ("open_jeugdhulp", 0.25),
                        ("pleegzorg", 0.08),
                        ("jeugdzorgplus_andere_aanbieder", 0.08),
                        ("jji", 0.05),
                        ("ggz", 0.07),
                        ("zelfstandig", 0.07),
                        ("onbekend", 0.05),
                    ],
                )
            });
            w.stay.row(&[
                V::S(&stay_id),
                V::S(&pid),
                V::S(&unit.id),
                V::D(admission),
                if discharged { V::D(discharge) } else { V::Null },
                V::S(legal),
                V::B(crisis),
                tls.map(V::D).unwrap_or(V::Null),
                reason.map(V::S).unwrap_or(V::Null),
                destination.map(V::S).unwrap_or(V::Null),
            ])?;

            let day_in_stay = |rng: &mut ChaCha8Rng| rng.random_range(admission..=last_day);
            let ts_in_stay = |rng: &mut ChaCha8Rng| {
                day_in_stay(rng) as i64 * MICROS_PER_DAY + rng.random_range(0..MICROS_PER_DAY)
            };
            let data_end = (sim_end as i64 + 1) * MICROS_PER_DAY;

            // Moves.
            for _ in 0..poisson(&mut rng, 0.12 * months_in_care) {
                let move_id = next_id(1, "M");
                let kind = pick(
                    &mut rng,
                    &[
                        ("intern", 0.55),
                        ("time_out", 0.2),
                        ("doorplaatsing", 0.1),
                        ("jji", 0.05),
                        ("ggz", 0.1),
                    ],
                );
                let to =
                    (kind == "intern").then(|| units[rng.random_range(0..units.len())].id.clone());
                let planned = rng.random::<f64>() < 0.6;
                let d = day_in_stay(&mut rng);
                w.mv.row(&[
                    V::S(&move_id),
                    V::S(&pid),
                    V::S(&stay_id),
                    V::D(d),
                    V::S(&unit.id),
                    to.as_deref().map(V::S).unwrap_or(V::Null),
                    V::S(kind),
                    V::B(planned),
                ])?;
            }

            // Seclusions: negative binomial per stay (k ≈ 0.2), own room 71%.
            let mid = admission + (last_day - admission) / 2;
            let mean = seclusions_per_month(mid) * months_in_care * propensity;
            let seclusions = neg_binomial(&mut rng, mean.max(1e-9), 2.0).min(400);
            let others = neg_binomial(&mut rng, 0.6 * months_in_care, 0.5).min(400);
            for i in 0..(seclusions + others) {
                let is_seclusion = i < seclusions;
                let (kind, room, minutes) = if is_seclusion {
                    let kind = pick(
                        &mut rng,
                        &[
                            ("afzondering_eigen_kamer", 0.71),
                            ("afzondering_ruimte", 0.22),
                            ("insluiting", 0.07),
                        ],
                    );
                    let (room, median, p95) = match kind {
                        "afzondering_eigen_kamer" => ("eigen_kamer", 45.0, 480.0),
                        "afzondering_ruimte" => ("afzonderingsruimte", 90.0, 480.0),
                        _ => ("time_out_ruimte", 60.0, 360.0),
                    };
                    (kind, Some(room), lognormal(&mut rng, median, p95))
                } else {
                    let kind = pick(
                        &mut rng,
                        &[
                            ("vastpakken", 20.0),
                            ("vastpakken_vasthouden", 10.0),
                            ("time_out_overplaatsing", 5.0),
                            ("onderzoek_lichaam_kleding", 12.0),
                            ("urinecontrole", 12.0),
                            ("kamercontrole", 15.0),
                            ("beperking_communicatie", 8.0),
                            ("beperking_bezoek", 5.0),
                            ("cameratoezicht", 5.0),
                            ("gebiedsverbod", 4.0),
                            ("overig", 4.0),
                        ],
                    );
                    let (median, p95) = match kind {
                        "vastpakken" | "vastpakken_vasthouden" => (10.0, 45.0),
                        "onderzoek_lichaam_kleding" | "urinecontrole" | "kamercontrole" => {
                            (15.0, 60.0)
                        }
                        "time_out_overplaatsing" => (2.0 * 1440.0, 7.0 * 1440.0),
                        "beperking_communicatie" | "beperking_bezoek" => {
                            (7.0 * 1440.0, 28.0 * 1440.0)
                        }
                        "cameratoezicht" | "gebiedsverbod" => (14.0 * 1440.0, 56.0 * 1440.0),
                        _ => (1440.0, 7.0 * 1440.0),
                    };
                    (kind, None, lognormal(&mut rng, median, p95))
                };
                let measure_id = next_id(2, "R");
                let emergency = rng.random::<f64>() < if is_seclusion { 0.3 } else { 0.2 };
                let start = ts_in_stay(&mut rng);
                let end = start + (minutes.max(1.0) as i64) * MICROS_PER_MINUTE;
                let end = (end < data_end).then_some(end);
                let long = minutes > 720.0;
                let consent = (emergency && long && rng.random::<f64>() < 0.65)
                    .then_some(start + 720 * MICROS_PER_MINUTE);
                let reason = pick(
                    &mut rng,
                    &[
                        ("gevaar_zelf", 0.3),
                        ("gevaar_ander", 0.4),
                        ("onttrekking", 0.1),
                        ("verstoring_groep", 0.15),
                        ("overig", 0.05),
                    ],
                );
                w.measure.row(&[
                    V::S(&measure_id),
                    V::S(&pid),
                    V::S(&stay_id),
                    V::S(&unit.id),
                    V::S(kind),
                    V::S(if emergency {
                        "noodsituatie"
                    } else {
                        "hulpverleningsplan"
                    }),
                    V::T(start),
                    end.map(V::T).unwrap_or(V::Null),
                    room.map(V::S).unwrap_or(V::Null),
                    V::S(reason),
                    V::B(rng.random::<f64>() < 0.989),
                    consent.map(V::T).unwrap_or(V::Null),
                ])?;
            }

            // Incidents: attempts 5–10% of youths a year, suicides 0–2 a year nationally.
            let yrs = months_in_care / 12.0;
            let frailty = Gamma::new(0.5, 2.0)
                .map(|g| g.sample(&mut rng))
                .unwrap_or(1.0);
            for (kind, per_year) in [
                ("suicidepoging", 0.09 * frailty),
                ("suicide", 0.0015),
                ("ernstige_zelfbeschadiging", 0.3 * frailty),
                ("weglopen", 0.8),
                ("agressie", 2.0 * propensity.sqrt()),
            ] {
                for _ in 0..poisson(&mut rng, per_year * yrs) {
                    let id = next_id(3, "I");
                    let ts = ts_in_stay(&mut rng);
                    w.incident.row(&[
                        V::S(&id),
                        V::S(&pid),
                        V::S(&stay_id),
                        V::T(ts),
                        V::S(kind),
                    ])?;
                }
            }

            // Care plans: at admission and every 91 days.
            let mut d = admission;
            while d <= last_day {
                let id = next_id(4, "C");
                let youth_took_part = rng.random::<f64>() < 0.8;
                let parents_took_part = rng.random::<f64>() < 0.6;
                w.care_plan.row(&[
                    V::S(&id),
                    V::S(&pid),
                    V::S(&stay_id),
                    V::D(d),
                    V::B(youth_took_part),
                    V::B(parents_took_part),
                ])?;
                d += 91;
            }

            // Education: one record per calendar month in care.
            let mut month = {
                let a = date_of(admission);
                NaiveDate::from_ymd_opt(chrono::Datelike::year(&a), chrono::Datelike::month(&a), 1)
                    .unwrap_or(a)
            };
            while (month - date_of(0)).num_days() as i32 <= last_day {
                let enrolled = rng.random::<f64>() < 0.9;
                let planned = rng.random_range(80..=104);
                let attended = if enrolled {
                    ((planned as f64) * (0.7 + 0.2 * (rng.random::<f64>() - 0.5) * 2.0))
                        .round()
                        .clamp(0.0, planned as f64) as i64
                } else {
                    0
                };
                w.education.row(&[
                    V::S(&pid),
                    V::S(&stay_id),
                    V::D((month - date_of(0)).num_days() as i32),
                    V::B(enrolled),
                    V::I(if enrolled { planned } else { 0 }),
                    V::I(attended),
                ])?;
                month = month
                    .checked_add_months(chrono::Months::new(1))
                    .unwrap_or(NaiveDate::MAX);
            }

            // Readmission: 15% of youths come back after a gap.
            if discharged
                && rng.random::<f64>() < READMISSION_SHARE / (1.0 + READMISSION_SHARE) * 2.0
            {
                admission = discharge + rng.random_range(30..300);
                if admission <= sim_end {
                    continue;
                }
            }
            break;
        }
    }
    w.finish()
}

fn generate_panel(dir: &Path, seed: u64, scale: f64) -> Result<BTreeMap<String, u64>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5041_4e45_4c00_0000);
    let mut w = TableWriter::create(dir, table("panel_response")?)?;
    let period: Period = COVERAGE.parse()?;
    let per_quarter = (PANEL_RESPONDENTS_PER_QUARTER * scale).round() as u64;
    for q in period.quarters() {
        let quarter = q.to_string();
        for _ in 0..per_quarter {
            let pid = hex_id(&mut rng);
            let role = pick(
                &mut rng,
                &[("jongere", 0.5), ("ouder", 0.25), ("professional", 0.25)],
            );
            let lift = match role {
                "professional" => 0.3,
                "ouder" => -0.1,
                _ => 0.0,
            };
            for question in ["Q1", "Q2", "Q3", "Q4", "Q5"] {
                let base = 3.4 + lift + 0.4 * rng.random::<f64>() - 0.2;
                let score = (base + 1.1 * (rng.random::<f64>() - 0.5) * 2.0)
                    .round()
                    .clamp(1.0, 5.0) as i64;
                w.row(&[
                    V::S(&pid),
                    V::S(role),
                    V::S(&quarter),
                    V::S(question),
                    V::I(score),
                ])?;
            }
        }
    }
    let mut rows = BTreeMap::new();
    rows.insert("panel_response".to_string(), w.finish()?);
    Ok(rows)
}

/// Generate every provider (in parallel, each from its own seed) and the panel; write a manifest.
pub fn generate(opts: &SynthOptions, progress: impl Fn(&str) + Sync) -> Result<Manifest> {
    anyhow::ensure!(
        opts.providers >= 1 && opts.providers <= 9_999,
        "--providers must be 1 to 9999"
    );
    anyhow::ensure!(
        opts.scale.is_finite() && opts.scale > 0.0 && opts.scale <= 100_000.0,
        "--scale must be a positive number up to 100000"
    );
    std::fs::create_dir_all(&opts.out)
        .with_context(|| format!("creating {}", opts.out.display()))?;
    let ids: Vec<String> = (0..opts.providers).map(provider_id).collect();
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(ids.len());
    let results: Vec<Result<(String, BTreeMap<String, u64>)>> = std::thread::scope(|s| {
        let chunks: Vec<Vec<(usize, String)>> = (0..threads)
            .map(|t| {
                ids.iter()
                    .cloned()
                    .enumerate()
                    .filter(|(i, _)| i % threads == t)
                    .collect()
            })
            .collect();
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|chunk| {
                let progress = &progress;
                s.spawn(move || {
                    chunk
                        .into_iter()
                        .map(|(i, id)| {
                            let rows = generate_provider(
                                &opts.out.join(&id),
                                &id,
                                i,
                                opts.seed,
                                opts.scale,
                            )
                            .with_context(|| format!("provider {id}"))?;
                            progress(&format!(
                                "{id}: {} stays, {} measures",
                                rows.get("stay").copied().unwrap_or(0),
                                rows.get("restrictive_measure").copied().unwrap_or(0)
                            ));
                            Ok((id, rows))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| {
                h.join()
                    .unwrap_or_else(|_| vec![Err(anyhow::anyhow!("a generator thread panicked"))])
            })
            .collect()
    });
    let mut rows = BTreeMap::new();
    for r in results {
        let (id, r) = r?;
        rows.insert(id, r);
    }
    let panel = generate_panel(&opts.out.join(PANEL_NODE), opts.seed, opts.scale)?;
    progress(&format!(
        "{PANEL_NODE}: {} panel responses",
        panel.get("panel_response").copied().unwrap_or(0)
    ));
    rows.insert(PANEL_NODE.to_string(), panel);
    let manifest = Manifest {
        providers: ids,
        panel_node: PANEL_NODE.to_string(),
        seed: opts.seed,
        scale: opts.scale,
        coverage: COVERAGE.to_string(),
        rows,
    };
    let path = opts.out.join("manifest.json");
    std::fs::write(&path, serde_json::to_string_pretty(&manifest)?)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(manifest)
}
