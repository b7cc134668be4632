//! The governance endpoints: proposals, their estimate and dry run, reviewer approvals and
//! rejections, and the signed catalog versions nodes fetch.

use crate::proposals::{GovernanceError, Proposal, ProposalStatus};
use crate::server::{ANY_ROLE, AppState, authorize, error_response};
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

fn bad_request(message: impl Into<String>) -> Response {
    error_response(StatusCode::BAD_REQUEST, "bad_request", message)
}

fn internal(e: impl std::fmt::Display) -> Response {
    error_response(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
}

fn governance_error(e: GovernanceError) -> Response {
    let (status, code) = match &e {
        GovernanceError::UnknownProposal(_) => (StatusCode::NOT_FOUND, "unknown_proposal"),
        GovernanceError::NotPending { .. } => (StatusCode::CONFLICT, "not_pending"),
        GovernanceError::OwnProposal(_) => (StatusCode::FORBIDDEN, "own_proposal"),
        GovernanceError::AlreadyApproved { .. } => (StatusCode::CONFLICT, "already_approved"),
        GovernanceError::AlreadyInCatalog(_) => (StatusCode::CONFLICT, "already_in_catalog"),
        GovernanceError::Store(_) => (StatusCode::INTERNAL_SERVER_ERROR, "store"),
    };
    error_response(status, code, e.to_string())
}

fn audit(state: &AppState, event: policies::audit::AuditEvent) -> Result<(), Response> {
    state.runner.audit.append(event).map(|_| ()).map_err(|e| {
        error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "audit_failed",
            e.to_string(),
        )
    })
}

fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8], shape: &str) -> Result<T, Response> {
    serde_json::from_slice(body).map_err(|e| bad_request(format!("body must be {shape}: {e}")))
}

fn clean_text(field: &str, text: &str) -> Result<String, Response> {
    let t = text.trim();
    if t.is_empty() {
        return Err(bad_request(format!("'{field}' must not be empty")));
    }
    if t.chars().count() > MAX_TEXT_CHARS {
        return Err(bad_request(format!(
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
) -> Response {
    let caller = match authorize(&state, &headers, &[Role::Researcher]) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let req: ProposeBody = match parse_body(&body, "{\"toml\": \"…\", \"purpose\": \"…\"}") {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let purpose = match clean_text("purpose", &req.purpose) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let approved = match state.runner.store.latest_catalog() {
        Ok(c) => c,
        Err(e) => return governance_error(e),
    };
    let file = proposal_file(&req.toml);
    let candidate = state
        .runner
        .catalog_with(&approved, &[(file.clone(), req.toml.clone())])
        .await;
    let catalog = match candidate {
        Ok(c) => c,
        Err(policies::CatalogError::Invalid(problems)) => {
            return (
                StatusCode::UNPROCESSABLE_ENTITY,
                Json(serde_json::json!({
                    "error": "invalid_indicator",
                    "message": format!("{} problem(s) in the proposed indicator", problems.len()),
                    "problems": problems.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
                })),
            )
                .into_response();
        }
        Err(e) => return internal(e),
    };
    let Some(ind) = catalog
        .files
        .iter()
        .find(|(_, f)| **f == file)
        .and_then(|(id, _)| catalog.get(id))
        .cloned()
    else {
        return internal("the proposal vanished from its own catalog");
    };
    match state.runner.store.proposals() {
        Ok(ps) => {
            if let Some(p) = ps
                .iter()
                .find(|p| p.indicator == ind.id && p.status == ProposalStatus::Pending)
            {
                return error_response(
                    StatusCode::CONFLICT,
                    "already_proposed",
                    format!(
                        "proposal {} for '{}' is still pending; wait for its decision",
                        p.id, ind.id
                    ),
                );
            }
        }
        Err(e) => return internal(e),
    }
    let proposal =
        match state
            .runner
            .store
            .create_proposal(&ind.id, &req.toml, &purpose, &caller.name)
        {
            Ok(p) => p,
            Err(e) => return internal(e),
        };
    if let Err(r) = audit(
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
    ) {
        return r;
    }
    (
        StatusCode::CREATED,
        Json(serde_json::json!({
            "proposal": proposal,
            "required_approvals": state.runner.required_approvals,
            "estimate": estimate(&state, &catalog, &ind),
        })),
    )
        .into_response()
}

fn load(state: &AppState, id: &str) -> Result<Proposal, Response> {
    match state.runner.store.proposal(id) {
        Ok(Some(p)) => Ok(p),
        Ok(None) => Err(governance_error(GovernanceError::UnknownProposal(
            id.to_string(),
        ))),
        Err(e) => Err(internal(e)),
    }
}

pub async fn list_proposals(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Err(e) = authorize(&state, &headers, ANY_ROLE) {
        return e.into_response();
    }
    match state.runner.store.proposals() {
        Ok(ps) => Json(serde_json::json!({
            "required_approvals": state.runner.required_approvals,
            "proposals": ps,
        }))
        .into_response(),
        Err(e) => internal(e),
    }
}

pub async fn get_proposal(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(e) = authorize(&state, &headers, ANY_ROLE) {
        return e.into_response();
    }
    match load(&state, &id) {
        Ok(p) => Json(serde_json::json!({
            "proposal": p,
            "required_approvals": state.runner.required_approvals,
        }))
        .into_response(),
        Err(r) => r,
    }
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
) -> Response {
    let caller = match authorize(&state, &headers, &[Role::Researcher, Role::Reviewer]) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let req: DryRunBody = if body.is_empty() {
        DryRunBody::default()
    } else {
        match parse_body(&body, "{\"period\": \"2024Q1[:2024Q4]\"} or empty") {
            Ok(b) => b,
            Err(e) => return e.into_response(),
        }
    };
    let proposal = match load(&state, &id) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let Some(sandbox) = state.runner.sandbox.clone() else {
        return error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "dry_run_unavailable",
            "dry runs are off on this coordinator (governance.dry_run_providers = 0)",
        );
    };
    let coverage = sandbox.coverage();
    let period: Period = match &req.period {
        Some(p) => match p.parse() {
            Ok(p) => p,
            Err(e) => return bad_request(format!("period '{p}': {e}")),
        },
        None => Period {
            first: coverage.last,
            last: coverage.last,
        },
    };
    if !coverage.contains(&period) {
        return bad_request(format!(
            "period {period} lies outside the synthetic data ({coverage})"
        ));
    }
    if period.quarters().len() > MAX_DRY_RUN_QUARTERS {
        return bad_request(format!(
            "a dry run covers at most {MAX_DRY_RUN_QUARTERS} quarters"
        ));
    }
    // The proposal's own text, checked again in today's catalog (an approved one is in it).
    let extra = if proposal.status == ProposalStatus::Approved {
        Vec::new()
    } else {
        vec![(proposal_file(&proposal.toml), proposal.toml.clone())]
    };
    let approved = match state.runner.store.latest_catalog() {
        Ok(c) => c,
        Err(e) => return governance_error(e),
    };
    let catalog = match state.runner.catalog_with(&approved, &extra).await {
        Ok(c) => c,
        Err(e) => {
            return error_response(
                StatusCode::CONFLICT,
                "invalid_indicator",
                format!("the proposal no longer fits the catalog: {e}"),
            );
        }
    };
    let Some(ind) = catalog.get(&proposal.indicator).cloned() else {
        return internal("the proposal's indicator is missing from its catalog");
    };
    let records = match crate::sandbox::dry_run(sandbox.as_ref(), &catalog, &ind, &period).await {
        Ok(r) => r,
        Err(e) => {
            return error_response(
                StatusCode::UNPROCESSABLE_ENTITY,
                "dry_run_failed",
                format!("the dry run failed: {e}"),
            );
        }
    };
    let _ = audit(
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
    );
    Json(serde_json::json!({
        "proposal": proposal.id,
        "indicator": ind.id,
        "period": period.to_string(),
        "synthetic": true,
        "note": "Synthetic providers only: no node was asked and no privacy budget was spent.",
        "records": records,
    }))
    .into_response()
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
) -> Response {
    let caller = match authorize(&state, &headers, &[Role::Reviewer]) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let req: ApproveBody = match parse_body(&body, "{\"signature\": \"<hex ed25519>\"}") {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let proposal = match load(&state, &id) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let public_key = match state.runner.store.reviewer_key(&caller.name) {
        Ok(Some(k)) => k,
        Ok(None) => {
            return error_response(
                StatusCode::FORBIDDEN,
                "no_signing_key",
                format!(
                    "reviewer {} has no registered public key: an admin registers it with `stroom token create --role reviewer --name {} --public-key HEX`",
                    caller.name, caller.name
                ),
            );
        }
        Err(e) => return internal(e),
    };
    let refuse = |state: &AppState, r: Response, why: String| {
        let _ = audit(
            state,
            policies::audit::AuditEvent {
                actor: caller.name.clone(),
                action: "proposal.approve".into(),
                indicator: Some(proposal.indicator.clone()),
                content_hash: Some(proposal.content_hash.clone()),
                parameters: serde_json::json!({ "proposal": proposal.id }),
                outcome: "refused".into(),
                reason: Some(why),
                ..Default::default()
            },
        );
        r
    };
    if !verify_approval(
        &public_key,
        &proposal.indicator,
        &proposal.content_hash,
        &req.signature,
    ) {
        let msg = format!(
            "the signature does not verify with {}'s registered key over indicator '{}' with content sha256 {}",
            caller.name, proposal.indicator, proposal.content_hash
        );
        return refuse(
            &state,
            error_response(StatusCode::BAD_REQUEST, "bad_signature", msg.clone()),
            msg,
        );
    }
    let signature = ReviewerSignature {
        reviewer: caller.name.clone(),
        public_key,
        signature: req.signature.trim().to_ascii_lowercase(),
        signed_at: state.runner.store.now(),
    };
    let outcome = match state
        .runner
        .store
        .approve(&id, &signature, state.runner.required_approvals)
    {
        Ok(o) => o,
        Err(e) => {
            let why = e.to_string();
            return refuse(&state, governance_error(e), why);
        }
    };
    if outcome.catalog_version.is_some()
        && let Err(e) = state.runner.reload_catalog().await
    {
        tracing::error!(error = %e, "approved, but the catalog did not reload");
        return internal(e);
    }
    if let Err(r) = audit(
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
            }),
            outcome: if outcome.catalog_version.is_some() {
                "approved".into()
            } else {
                "approval recorded".into()
            },
            ..Default::default()
        },
    ) {
        return r;
    }
    match load(&state, &id) {
        Ok(p) => Json(serde_json::json!({ "proposal": p, "outcome": outcome })).into_response(),
        Err(r) => r,
    }
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
) -> Response {
    let caller = match authorize(&state, &headers, &[Role::Reviewer]) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let req: RejectBody = match parse_body(&body, "{\"reason\": \"…\"}") {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let reason = match clean_text("reason", &req.reason) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let proposal = match load(&state, &id) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    if let Err(e) = state.runner.store.reject(&id, &caller.name, &reason) {
        return governance_error(e);
    }
    if let Err(r) = audit(
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
    ) {
        return r;
    }
    match load(&state, &id) {
        Ok(p) => Json(serde_json::json!({ "proposal": p })).into_response(),
        Err(r) => r,
    }
}

/// The newest signed catalog version (public: approved definitions are public, and their
/// signatures, not the transport, are what a node trusts).
pub async fn latest_catalog(State(state): State<Arc<AppState>>) -> Response {
    match state.runner.store.latest_catalog() {
        Ok(c) => Json(c).into_response(),
        Err(e) => governance_error(e),
    }
}

pub async fn catalog_version(
    State(state): State<Arc<AppState>>,
    Path(version): Path<String>,
) -> Response {
    let Ok(v) = version.parse::<u64>() else {
        return bad_request(format!(
            "catalog version must be a number, found '{version}'"
        ));
    };
    match state.runner.store.catalog_version(v) {
        Ok(Some(c)) => Json(c).into_response(),
        Ok(None) => error_response(
            StatusCode::NOT_FOUND,
            "unknown_catalog_version",
            format!("no catalog version {v}"),
        ),
        Err(e) => internal(e),
    }
}
