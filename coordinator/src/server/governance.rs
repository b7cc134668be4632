//! The governance endpoints: proposals, their estimate and dry run, reviewer approvals and
//! rejections, and the signed catalog versions nodes fetch.

use super::{ANY_ROLE, AppState, authorize};
use crate::api_error::ApiError;
use crate::proposals::{GovernanceError, Proposal, ProposalStatus};
use crate::store::Role;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use policies::governance::{ReviewerSignature, verify_approval};
use policies::{Catalog, Indicator, Period};
use serde::Deserialize;
use std::sync::Arc;

/// Longest purpose statement or rejection reason accepted.
const MAX_TEXT_CHARS: usize = 4000;
/// Quarters one dry run may cover.
const MAX_DRY_RUN_QUARTERS: usize = 4;

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::Internal(e.to_string())
}

fn audit(state: &AppState, event: policies::audit::AuditEvent) -> Result<(), ApiError> {
    state
        .runner
        .audit
        .append(event)
        .map(|_| ())
        .map_err(|e| ApiError::Audit(e.to_string()))
}

fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8], shape: &str) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("body must be {shape}: {e}")))
}

fn clean_text(field: &str, text: &str) -> Result<String, ApiError> {
    let t = text.trim();
    if t.is_empty() {
        return Err(ApiError::BadRequest(format!("'{field}' must not be empty")));
    }
    if t.chars().count() > MAX_TEXT_CHARS {
        return Err(ApiError::BadRequest(format!(
            "'{field}' may be at most {MAX_TEXT_CHARS} characters"
        )));
    }
    Ok(t.to_string())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProposeBody {
    toml: String,
    purpose: String,
}

/// The file name a proposal's text goes by in its problems: `<id>.toml`, as in a catalog folder.
fn proposal_file(toml: &str) -> std::path::PathBuf {
    let id = policies::indicator::declared_id(toml)
        .filter(|id| policies::indicator::valid_id(id))
        .unwrap_or_else(|| "proposal".into());
    std::path::PathBuf::from(format!("{id}.toml"))
}

/// What the proposal costs each node and how wide its national intervals are expected to be.
fn estimate(state: &AppState, catalog: &Catalog, ind: &Indicator) -> serde_json::Value {
    let runner = &state.runner;
    let bases = crate::publish::bases(catalog, ind);
    let rho = catalog.rho(ind);
    let measures: Vec<serde_json::Value> = bases
        .iter()
        .filter_map(|b| b.query().map(|q| (b, q)))
        .flat_map(|(b, q)| {
            let nodes = runner.targets_for(b).len();
            q.measures(1).into_iter().map(move |m| {
                let national_sd = (nodes as f64 * m.variance()).sqrt();
                serde_json::json!({
                    "indicator": b.id,
                    "measure": m.name,
                    "mechanism": m.mechanism(),
                    "noise_sd_per_node": m.variance().sqrt(),
                    "nodes": nodes,
                    "national_noise_sd": national_sd,
                    "ci95_half_width": 1.959964 * national_sd,
                })
            })
        })
        .collect();
    serde_json::json!({
        "rho_per_quarter_per_node": rho,
        "epsilon_per_quarter_per_node_at_delta_1e-6":
            policies::sensitivity::zcdp_to_epsilon(rho, 1e-6),
        "measures": measures,
        "note": match ind.body {
            policies::Body::Query(_) => "95% intervals of each cell are about ± ci95_half_width (noise only).",
            policies::Body::Derived(_) => "A derived indicator's interval follows from these base measures; the dry run shows it.",
        },
    })
}

/// A researcher proposes an indicator: checked like `stroom policy check`, stored as pending,
/// answered with its cost and the expected width of its intervals.
pub async fn create_proposal(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let caller = authorize(&state, &headers, &[Role::Researcher])?;
    let req: ProposeBody = parse_body(&body, "{\"toml\": \"…\", \"purpose\": \"…\"}")?;
    let purpose = clean_text("purpose", &req.purpose)?;
    let approved = state.runner.store.latest_catalog()?;
    let file = proposal_file(&req.toml);
    let catalog = match state
        .runner
        .catalog_with(&approved, &[(file.clone(), req.toml.clone())])
        .await
    {
        Ok(c) => c,
        Err(policies::CatalogError::Invalid(problems)) => {
            return Err(ApiError::InvalidIndicator(
                problems.iter().map(|p| p.to_string()).collect(),
            ));
        }
        Err(e) => return Err(internal(e)),
    };
    let ind = catalog
        .files
        .iter()
        .find(|(_, f)| **f == file)
        .and_then(|(id, _)| catalog.get(id))
        .cloned()
        .ok_or_else(|| internal("the proposal vanished from its own catalog"))?;
    let proposals = state.runner.store.proposals()?;
    if let Some(p) = proposals
        .iter()
        .find(|p| p.indicator == ind.id && p.status == ProposalStatus::Pending)
    {
        return Err(ApiError::AlreadyProposed {
            proposal: p.id.clone(),
            indicator: ind.id.clone(),
        });
    }
    let proposal =
        state
            .runner
            .store
            .create_proposal(&ind.id, &req.toml, &purpose, &caller.name)?;
    audit(
        &state,
        policies::audit::AuditEvent {
            actor: caller.name,
            action: "proposal.create".into(),
            indicator: Some(ind.id.clone()),
            content_hash: Some(proposal.content_hash.clone()),
            parameters: serde_json::json!({ "proposal": proposal.id }),
            outcome: "pending".into(),
            ..Default::default()
        },
    )?;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({
            "proposal": proposal,
            "required_approvals": state.runner.required_approvals,
            "estimate": estimate(&state, &catalog, &ind),
        })),
    )
        .into_response())
}

fn load(state: &AppState, id: &str) -> Result<Proposal, ApiError> {
    state
        .runner
        .store
        .proposal(id)?
        .ok_or_else(|| GovernanceError::UnknownProposal(id.to_string()).into())
}

pub async fn list_proposals(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, ANY_ROLE)?;
    let proposals = state.runner.store.proposals()?;
    Ok(Json(serde_json::json!({
        "required_approvals": state.runner.required_approvals,
        "proposals": proposals,
    }))
    .into_response())
}

pub async fn get_proposal(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, ANY_ROLE)?;
    let proposal = load(&state, &id)?;
    Ok(Json(serde_json::json!({
        "proposal": proposal,
        "required_approvals": state.runner.required_approvals,
    }))
    .into_response())
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DryRunBody {
    period: Option<String>,
}

/// The proposal evaluated on synthetic providers: real bounding, noise and combination, no node
/// asked, no budget spent.
pub async fn dry_run(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let caller = authorize(&state, &headers, &[Role::Researcher, Role::Reviewer])?;
    let req: DryRunBody = if body.is_empty() {
        DryRunBody::default()
    } else {
        parse_body(&body, "{\"period\": \"2024Q1[:2024Q4]\"} or empty")?
    };
    let proposal = load(&state, &id)?;
    let sandbox = state
        .runner
        .sandbox
        .clone()
        .ok_or(ApiError::DryRunUnavailable)?;
    let coverage = sandbox.coverage();
    let period: Period = match &req.period {
        Some(p) => p
            .parse()
            .map_err(|e| ApiError::BadRequest(format!("period '{p}': {e}")))?,
        None => Period {
            first: coverage.last,
            last: coverage.last,
        },
    };
    if !coverage.contains(&period) {
        return Err(ApiError::BadRequest(format!(
            "period {period} lies outside the synthetic data ({coverage})"
        )));
    }
    if period.quarters().len() > MAX_DRY_RUN_QUARTERS {
        return Err(ApiError::BadRequest(format!(
            "a dry run covers at most {MAX_DRY_RUN_QUARTERS} quarters"
        )));
    }
    // The proposal's own text, checked again in today's catalog (an approved one is in it).
    let extra = if proposal.status == ProposalStatus::Approved {
        Vec::new()
    } else {
        vec![(proposal_file(&proposal.toml), proposal.toml.clone())]
    };
    let approved = state.runner.store.latest_catalog()?;
    let catalog = state
        .runner
        .catalog_with(&approved, &extra)
        .await
        .map_err(|e| ApiError::NoLongerFits(e.to_string()))?;
    let ind = catalog
        .get(&proposal.indicator)
        .cloned()
        .ok_or_else(|| internal("the proposal's indicator is missing from its catalog"))?;
    let records = crate::sandbox::dry_run(
        sandbox.as_ref(),
        &catalog,
        &ind,
        &period,
        &state.runner.population,
    )
    .await
    .map_err(|e| ApiError::DryRunFailed(e.to_string()))?;
    // A dry run reveals nothing about real records, so a failed audit line does not withhold it;
    // it is logged.
    if let Err(e) = audit(
        &state,
        policies::audit::AuditEvent {
            actor: caller.name,
            action: "proposal.dry_run".into(),
            indicator: Some(ind.id.clone()),
            content_hash: Some(proposal.content_hash.clone()),
            parameters: serde_json::json!({ "proposal": proposal.id, "period": period.to_string() }),
            outcome: "synthetic".into(),
            ..Default::default()
        },
    ) {
        tracing::warn!(error = %e, "dry run not audited");
    }
    Ok(Json(serde_json::json!({
        "proposal": proposal.id,
        "indicator": ind.id,
        "period": period.to_string(),
        "synthetic": true,
        "note": "Synthetic providers only: no node was asked and no privacy budget was spent.",
        "records": records,
    }))
    .into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApproveBody {
    /// Hex ed25519 signature over the approval message of (indicator, content hash).
    signature: String,
}

pub async fn approve(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let caller = authorize(&state, &headers, &[Role::Reviewer])?;
    let req: ApproveBody = parse_body(&body, "{\"signature\": \"<hex ed25519>\"}")?;
    let proposal = load(&state, &id)?;
    let public_key = state
        .runner
        .store
        .reviewer_key(&caller.name)?
        .ok_or_else(|| ApiError::NoSigningKey(caller.name.clone()))?;
    // A refused approval is audited with its reason before the refusal is sent.
    let refuse = |state: &AppState, e: ApiError| {
        let _ = audit(
            state,
            policies::audit::AuditEvent {
                actor: caller.name.clone(),
                action: "proposal.approve".into(),
                indicator: Some(proposal.indicator.clone()),
                content_hash: Some(proposal.content_hash.clone()),
                parameters: serde_json::json!({ "proposal": proposal.id }),
                outcome: "refused".into(),
                reason: Some(e.to_string()),
                ..Default::default()
            },
        );
        e
    };
    if !verify_approval(
        &public_key,
        &proposal.indicator,
        &proposal.content_hash,
        &req.signature,
    ) {
        return Err(refuse(
            &state,
            ApiError::BadSignature(format!(
                "the signature does not verify with {}'s registered key over indicator '{}' with content sha256 {}",
                caller.name, proposal.indicator, proposal.content_hash
            )),
        ));
    }
    // The budget plan with this indicator in the catalog must fit every node that reported its
    // budget; a node that has not reported is named in the answer, unchecked.
    let unchecked = if proposal.status == ProposalStatus::Pending {
        let approved = state.runner.store.latest_catalog()?;
        let extra = vec![(proposal_file(&proposal.toml), proposal.toml.clone())];
        let catalog = state
            .runner
            .catalog_with(&approved, &extra)
            .await
            .map_err(|e| refuse(&state, ApiError::NoLongerFits(e.to_string())))?;
        let budgets = state
            .runner
            .known_budgets(std::time::Duration::from_secs(3))
            .await;
        let plans = crate::budget_plan::plan(&catalog, &state.runner.targets, &budgets);
        if let Some(over) = crate::budget_plan::exceeded(&plans) {
            return Err(refuse(&state, ApiError::OverBudgetPlan(over)));
        }
        plans
            .iter()
            .filter(|p| p.fits.is_none())
            .map(|p| p.node.clone())
            .collect()
    } else {
        Vec::new()
    };
    let signature = ReviewerSignature {
        reviewer: caller.name.clone(),
        public_key,
        signature: req.signature.trim().to_ascii_lowercase(),
        signed_at: state.runner.store.now(),
    };
    let outcome = state
        .runner
        .store
        .approve(&id, &signature, state.runner.required_approvals)
        .map_err(|e| refuse(&state, e.into()))?;
    if outcome.catalog_version.is_some()
        && let Err(e) = state.runner.reload_catalog().await
    {
        tracing::error!(error = %e, "approved, but the catalog did not reload");
        return Err(internal(e));
    }
    audit(
        &state,
        policies::audit::AuditEvent {
            actor: caller.name,
            action: "proposal.approve".into(),
            indicator: Some(proposal.indicator.clone()),
            content_hash: Some(proposal.content_hash.clone()),
            parameters: serde_json::json!({
                "proposal": proposal.id,
                "approvals": outcome.approvals,
                "catalog_version": outcome.catalog_version,
                "budget_plan_unchecked": unchecked,
            }),
            outcome: if outcome.catalog_version.is_some() {
                "approved".into()
            } else {
                "approval recorded".into()
            },
            ..Default::default()
        },
    )?;
    let proposal = load(&state, &id)?;
    Ok(Json(serde_json::json!({
        "proposal": proposal,
        "outcome": outcome,
        "budget_plan_unchecked": unchecked,
    }))
    .into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RejectBody {
    reason: String,
}

pub async fn reject(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let caller = authorize(&state, &headers, &[Role::Reviewer])?;
    let req: RejectBody = parse_body(&body, "{\"reason\": \"…\"}")?;
    let reason = clean_text("reason", &req.reason)?;
    let proposal = load(&state, &id)?;
    state.runner.store.reject(&id, &caller.name, &reason)?;
    audit(
        &state,
        policies::audit::AuditEvent {
            actor: caller.name,
            action: "proposal.reject".into(),
            indicator: Some(proposal.indicator.clone()),
            content_hash: Some(proposal.content_hash.clone()),
            parameters: serde_json::json!({ "proposal": proposal.id }),
            outcome: "rejected".into(),
            reason: Some(reason),
            ..Default::default()
        },
    )?;
    let proposal = load(&state, &id)?;
    Ok(Json(serde_json::json!({ "proposal": proposal })).into_response())
}

/// The newest signed catalog version (public: approved definitions are public, and their
/// signatures, not the transport, are what a node trusts).
pub async fn latest_catalog(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    Ok(Json(state.runner.store.latest_catalog()?).into_response())
}

pub async fn catalog_version(
    State(state): State<Arc<AppState>>,
    Path(version): Path<String>,
) -> Result<Response, ApiError> {
    let v = version.parse::<u64>().map_err(|_| {
        ApiError::BadRequest(format!(
            "catalog version must be a number, found '{version}'"
        ))
    })?;
    let catalog = state
        .runner
        .store
        .catalog_version(v)?
        .ok_or(ApiError::UnknownCatalogVersion(v))?;
    Ok(Json(catalog).into_response())
}
