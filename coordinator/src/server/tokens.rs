//! API tokens: the admin lists and revokes them.

use super::*;

pub(super) async fn list_tokens(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, &[Role::Admin])?;
    let tokens = state.runner.store.list_tokens()?;
    Ok(Json(serde_json::json!({ "tokens": tokens })).into_response())
}

pub(super) async fn revoke_token(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let caller = authorize(&state, &headers, &[Role::Admin])?;
    let revoked = state.runner.store.revoke_token(&id);
    let _ = state.runner.audit.append(policies::audit::AuditEvent {
        actor: caller.name,
        action: "token.revoke".into(),
        parameters: serde_json::json!({ "token": id }),
        outcome: match &revoked {
            Ok(true) => "revoked".into(),
            Ok(false) => "refused: no such active token".into(),
            Err(e) => format!("failed: {e}"),
        },
        ..Default::default()
    });
    if revoked? {
        Ok(Json(serde_json::json!({ "id": id, "revoked": true })).into_response())
    } else {
        Err(ApiError::UnknownToken(id))
    }
}
