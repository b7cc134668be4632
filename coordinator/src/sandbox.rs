//! Dry runs: a proposed indicator evaluated on synthetic providers, end to end through the same
//! bounding, noise, combination and publication code as a real run, so a researcher sees the shape
//! and the noise of the output before anyone approves it. No node is asked and no budget is spent.
//!
//! The coordinator does not evaluate indicators itself (node and coordinator never depend on each
//! other); whoever starts it hands in a [`Sandbox`] that does.

use crate::national;
use crate::publish::{self, Record};
use futures::future::BoxFuture;
use policies::wire::Answer;
use policies::{Catalog, Indicator, Period};
use std::collections::BTreeMap;

pub trait Sandbox: Send + Sync {
    /// The quarters the synthetic records cover.
    fn coverage(&self) -> Period;
    /// Every synthetic provider's noisy answer (Arrow IPC, as a node sends it) for one base
    /// indicator and one quarter. Spends nothing anywhere.
    fn answers<'a>(
        &'a self,
        base: &'a Indicator,
        quarter: Period,
    ) -> BoxFuture<'a, Result<Vec<Vec<u8>>, String>>;
}

/// National records of `ind` over `period`, computed on the sandbox's synthetic providers.
pub async fn dry_run(
    sandbox: &dyn Sandbox,
    catalog: &Catalog,
    ind: &Indicator,
    period: &Period,
    population: &crate::reference::Population,
) -> Result<Vec<Record>, String> {
    let bases = publish::bases(catalog, ind);
    let mut records = Vec::new();
    for q in period.quarters() {
        let quarter = Period { first: q, last: q };
        let mut by_base = BTreeMap::new();
        for base in &bases {
            let mut answers = Vec::new();
            for bytes in sandbox.answers(base, quarter).await? {
                answers.push(Answer::decode(&bytes).map_err(|e| e.to_string())?);
            }
            if answers.is_empty() {
                return Err(format!(
                    "no synthetic provider holds records for '{}'",
                    base.id
                ));
            }
            let combined = national::combine(&answers, answers.len())
                .await
                .map_err(|e| e.to_string())?;
            by_base.insert(base.id.clone(), combined);
        }
        records.extend(publish::records(
            catalog,
            ind,
            &q.to_string(),
            &by_base,
            population,
        ));
    }
    Ok(records)
}
