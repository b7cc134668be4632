//! The OpenAPI document served at `/openapi.json`.

pub const DOCUMENT: &str = r##"{
  "openapi": "3.1.0",
  "info": {
    "title": "Stroom coordinator",
    "version": "0.1.0",
    "description": "Runs approved StroomOP indicators over the federation's nodes and publishes national indicators with 95% intervals (differential-privacy noise only). With a helper configured, indicators held by more than one node run by secure aggregation: the coordinator and the helper each see only secret shares of the nodes' vectors, every node adds its share of the noise, and a run with more than t nodes missing or rejected fails and publishes nothing; results have the same shape either way."
  },
  "components": {
    "securitySchemes": {
      "researcher": { "type": "http", "scheme": "bearer", "description": "A token with role researcher" },
      "reviewer": { "type": "http", "scheme": "bearer", "description": "A token with role reviewer" },
      "admin": { "type": "http", "scheme": "bearer", "description": "A token with role admin" }
    },
    "schemas": {
      "Error": { "type": "object", "required": ["error", "message"],
        "properties": { "error": { "type": "string" }, "message": { "type": "string" } } },
      "RunRequest": { "type": "object", "required": ["indicator", "period"], "additionalProperties": false,
        "properties": { "indicator": { "type": "string", "example": "seclusion.youths_secluded" },
                        "period": { "type": "string", "example": "2024Q1:2024Q4" } } },
      "Record": { "type": "object",
        "properties": { "indicator": { "type": "string" }, "period": { "type": "string" },
          "group": { "type": "object", "additionalProperties": { "type": "string" } },
          "estimate": { "type": "number" }, "ci_low": { "type": "number" }, "ci_high": { "type": "number" },
          "providers_reporting": { "type": "integer" }, "providers_total": { "type": "integer" },
          "rho": { "type": "number" } } },
      "Run": { "type": "object",
        "properties": { "id": { "type": "string" }, "indicator": { "type": "string" }, "period": { "type": "string" },
          "status": { "type": "string", "enum": ["pending", "running", "done", "partial", "failed"] },
          "requested_by": { "type": "string" }, "created_at": { "type": "string" }, "updated_at": { "type": "string" },
          "error": { "type": ["string", "null"] }, "resumed": { "type": "integer" }, "published": { "type": "boolean" },
          "results": { "type": "array", "items": { "$ref": "#/components/schemas/Record" } } } }
    }
  },
  "paths": {
    "/v1/runs": {
      "post": {
        "summary": "Start a run of an approved indicator over a period",
        "security": [{ "researcher": [] }],
        "requestBody": { "required": true, "content": { "application/json": { "schema": { "$ref": "#/components/schemas/RunRequest" } } } },
        "responses": {
          "202": { "description": "Run accepted", "content": { "application/json": { "schema": { "type": "object", "properties": { "id": { "type": "string" }, "status": { "type": "string" }, "url": { "type": "string" } } } } } },
          "400": { "description": "Malformed body or period", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } },
          "401": { "description": "No bearer token", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } },
          "403": { "description": "Token not recognised", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } },
          "404": { "description": "Indicator not in the approved catalog", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } },
          "413": { "description": "Body too large" }
        }
      }
    },
    "/v1/runs/{id}": {
      "get": {
        "summary": "A run's status and, once finished, its national results",
        "security": [{ "researcher": [] }, { "reviewer": [] }, { "admin": [] }],
        "parameters": [{ "name": "id", "in": "path", "required": true, "schema": { "type": "string" } }],
        "responses": {
          "200": { "description": "The run", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Run" } } } },
          "401": { "description": "No bearer token" }, "403": { "description": "Token not recognised" },
          "404": { "description": "No such run" }
        }
      }
    },
    "/v1/rounds": {
      "post": {
        "summary": "Start or resume a quarter's publication round: a run of every approved indicator for the quarter (annual indicators in the fourth quarter's round, over the whole year). Runs running or done are kept; failed and partial ones run again; indicators approved since are added. Results are under embargo until released.",
        "security": [{ "researcher": [] }],
        "requestBody": { "required": true, "content": { "application/json": { "schema": { "type": "object", "required": ["quarter"], "additionalProperties": false,
          "properties": { "quarter": { "type": "string", "example": "2024Q3" } } } } } },
        "responses": { "202": { "description": "The round (as GET) plus `started` (runs started now) and `skipped` (indicators no configured node serves)" },
          "400": { "description": "Bad body or not a quarter" }, "401": { "description": "No bearer token" }, "403": { "description": "Not a researcher token" },
          "413": { "description": "Body too large" } }
      }
    },
    "/v1/rounds/{quarter}": {
      "get": {
        "summary": "A round: its runs and their state, finished/total, state (running, finished, released), the last release and the reviewers who released the current figures so far",
        "security": [{ "researcher": [] }, { "reviewer": [] }, { "admin": [] }],
        "parameters": [{ "name": "quarter", "in": "path", "required": true, "schema": { "type": "string", "example": "2024Q3" } }],
        "responses": { "200": { "description": "The round" }, "400": { "description": "Not a quarter" }, "401": { "description": "No bearer token" }, "403": { "description": "Token refused" },
          "404": { "description": "The round was never started" } }
      }
    },
    "/v1/rounds/{quarter}/release": {
      "post": {
        "summary": "A reviewer releases the round's current figures (the quarter's, and in a fourth quarter the year's); with publication.required_releases reviewers' releases of the same figures they become public: in /v1/indicators without a token, its CSV and the dashboard. Audited, refusals too.",
        "security": [{ "reviewer": [] }],
        "parameters": [{ "name": "quarter", "in": "path", "required": true, "schema": { "type": "string", "example": "2024Q3" } }],
        "responses": { "200": { "description": "status released (public from now) or unchanged (these figures were already public)" },
          "202": { "description": "status awaiting_releases: recorded, more reviewers must release" },
          "400": { "description": "Not a quarter" }, "401": { "description": "No bearer token" }, "403": { "description": "Not a reviewer token" },
          "409": { "description": "nothing_to_release (no published figures for the round) or round_unfinished (runs still going)" },
          "500": { "description": "The audit log could not be written" } }
      }
    },
    "/v1/indicators": {
      "get": {
        "summary": "National indicators. Without a token: released rounds only (the public view). With any valid token: every published result, embargoed ones too, each record with `released`; the CSV then has a last column `released`. Both carry `releases` (quarter, periods, released_at) and `reference.population` (source, retrieved, licence of the population per-capita figures divide by, or null).",
        "parameters": [
          { "name": "format", "in": "query", "schema": { "type": "string", "enum": ["json", "csv"] } },
          { "name": "indicator", "in": "query", "schema": { "type": "string" } }
        ],
        "responses": {
          "200": { "description": "Published records, rounded or suppressed by the catalog's publication rules",
                   "content": { "application/json": {}, "text/csv": {} } },
          "400": { "description": "Unknown format" },
          "401": { "description": "A malformed Authorization header" }, "403": { "description": "A token that is not valid" }
        }
      }
    },
    "/v1/indicators/{indicator}/{period}/interpretation": {
      "put": {
        "summary": "Attach or replace a reviewer's interpretation (duiding) of a published indicator and quarter",
        "security": [{ "reviewer": [] }],
        "parameters": [
          { "name": "indicator", "in": "path", "required": true, "schema": { "type": "string" } },
          { "name": "period", "in": "path", "required": true, "schema": { "type": "string", "example": "2024Q1" } }
        ],
        "requestBody": { "required": true, "content": { "application/json": { "schema": { "type": "object", "additionalProperties": false,
          "properties": { "nl": { "type": "string", "maxLength": 4000 }, "en": { "type": "string", "maxLength": 4000 } } } } } },
        "responses": { "200": { "description": "Stored; shown with the published numbers" }, "400": { "description": "No text, unknown field or too long" },
          "401": { "description": "No bearer token" }, "403": { "description": "Not a reviewer token" },
          "404": { "description": "Unknown indicator, or nothing published for that quarter" } }
      }
    },
    "/v1/budget": {
      "get": {
        "summary": "Each node's privacy budget as the node reports it: ρ per data period (year, quarter or lifetime of the data), spend and remainder per data period with any spend, the total and optional lifetime cap, ε at δ",
        "security": [{ "researcher": [] }, { "reviewer": [] }, { "admin": [] }],
        "responses": { "200": { "description": "One entry per node: its budget, or why it could not be asked" }, "401": { "description": "No bearer token" }, "403": { "description": "Token refused" } }
      }
    },
    "/v1/budget/plan": {
      "get": {
        "summary": "The budget plan: per node, what a year of publication rounds over the approved catalog charges to one budget period of its data (four quarterly rounds plus the annual figures), against the budget the node reports, with the cost of each base indicator",
        "security": [{ "researcher": [] }, { "reviewer": [] }, { "admin": [] }],
        "responses": { "200": { "description": "rounds_per_year and one plan per node: rho_budget (null when the node has not reported), rho_planned, rho_headroom, fits, lines" }, "401": { "description": "No bearer token" }, "403": { "description": "Token refused" } }
      }
    },
    "/v1/tokens": {
      "get": {
        "summary": "List tokens: id, name, role, creation, expiry, revocation (never a token)",
        "security": [{ "admin": [] }],
        "responses": { "200": { "description": "The tokens" }, "401": { "description": "No bearer token" }, "403": { "description": "Not an admin token" } }
      }
    },
    "/v1/tokens/{id}/revoke": {
      "post": {
        "summary": "Revoke a token",
        "security": [{ "admin": [] }],
        "parameters": [{ "name": "id", "in": "path", "required": true, "schema": { "type": "string" } }],
        "responses": { "200": { "description": "Revoked" }, "401": { "description": "No bearer token" }, "403": { "description": "Not an admin token" }, "404": { "description": "No such active token" } }
      }
    },
    "/v1/proposals": {
      "post": {
        "summary": "Propose an indicator (TOML text) with its purpose; checked like `stroom policy check`, answered with its cost and expected interval width",
        "security": [{ "researcher": [] }],
        "requestBody": { "required": true, "content": { "application/json": { "schema": { "type": "object", "required": ["toml", "purpose"], "additionalProperties": false,
          "properties": { "toml": { "type": "string" }, "purpose": { "type": "string", "maxLength": 4000 } } } } } },
        "responses": { "201": { "description": "Pending proposal, estimate (rho per node per quarter, epsilon at delta 1e-6, 95% half-width per measure)" },
          "400": { "description": "Bad body or empty purpose" }, "401": { "description": "No bearer token" }, "403": { "description": "Not a researcher token" },
          "409": { "description": "A proposal for this indicator id is pending" },
          "422": { "description": "Invalid indicator; `problems` lists every problem as file: field: message" } }
      },
      "get": {
        "summary": "Every proposal with its approvals, rejection and catalog version",
        "security": [{ "researcher": [] }, { "reviewer": [] }, { "admin": [] }],
        "responses": { "200": { "description": "Proposals and the approvals required" }, "401": { "description": "No bearer token" }, "403": { "description": "Token refused" } }
      }
    },
    "/v1/proposals/{id}": {
      "get": {
        "summary": "One proposal",
        "security": [{ "researcher": [] }, { "reviewer": [] }, { "admin": [] }],
        "parameters": [{ "name": "id", "in": "path", "required": true, "schema": { "type": "string" } }],
        "responses": { "200": { "description": "The proposal" }, "401": { "description": "No bearer token" }, "403": { "description": "Token refused" }, "404": { "description": "No such proposal" } }
      }
    },
    "/v1/proposals/{id}/dry-run": {
      "post": {
        "summary": "Evaluate the proposal on synthetic providers (no node asked, no budget spent)",
        "security": [{ "researcher": [] }, { "reviewer": [] }],
        "parameters": [{ "name": "id", "in": "path", "required": true, "schema": { "type": "string" } }],
        "requestBody": { "required": false, "content": { "application/json": { "schema": { "type": "object", "additionalProperties": false,
          "properties": { "period": { "type": "string", "example": "2024Q1" } } } } } },
        "responses": { "200": { "description": "National records computed on synthetic data", "content": { "application/json": { "schema": { "type": "object",
            "properties": { "records": { "type": "array", "items": { "$ref": "#/components/schemas/Record" } }, "synthetic": { "type": "boolean" } } } } } },
          "400": { "description": "Bad body or period outside the synthetic data" }, "401": { "description": "No bearer token" }, "403": { "description": "Not a researcher or reviewer token" },
          "404": { "description": "No such proposal" }, "503": { "description": "Dry runs are off" } }
      }
    },
    "/v1/proposals/{id}/approve": {
      "post": {
        "summary": "Approve with the reviewer's ed25519 signature over 'stroom indicator approval v1\\nindicator=ID\\ncontent_sha256=HASH\\n'",
        "security": [{ "reviewer": [] }],
        "parameters": [{ "name": "id", "in": "path", "required": true, "schema": { "type": "string" } }],
        "requestBody": { "required": true, "content": { "application/json": { "schema": { "type": "object", "required": ["signature"], "additionalProperties": false,
          "properties": { "signature": { "type": "string", "description": "hex" } } } } } },
        "responses": { "200": { "description": "Approval recorded; `outcome.catalog_version` is set when it completed the proposal; `budget_plan_unchecked` names nodes whose budget was not known, so the plan could not be checked against it" },
          "400": { "description": "Bad body or a signature that does not verify with the reviewer's registered key" },
          "401": { "description": "No bearer token" }, "403": { "description": "Not a reviewer, no registered key, or the proposer's own proposal" },
          "404": { "description": "No such proposal" }, "409": { "description": "Already approved by this reviewer, not pending, no longer fitting the catalog, or `over_budget_plan`: with the indicator, a year of rounds would cost some node more than its budget (the figures are in the message)" } }
      }
    },
    "/v1/proposals/{id}/reject": {
      "post": {
        "summary": "Reject with a reason",
        "security": [{ "reviewer": [] }],
        "parameters": [{ "name": "id", "in": "path", "required": true, "schema": { "type": "string" } }],
        "requestBody": { "required": true, "content": { "application/json": { "schema": { "type": "object", "required": ["reason"], "additionalProperties": false,
          "properties": { "reason": { "type": "string", "maxLength": 4000 } } } } } },
        "responses": { "200": { "description": "Rejected" }, "400": { "description": "No reason" }, "401": { "description": "No bearer token" },
          "403": { "description": "Not a reviewer token" }, "404": { "description": "No such proposal" }, "409": { "description": "Not pending" } }
      }
    },
    "/v1/catalog": {
      "get": {
        "summary": "The newest signed catalog version: every approved indicator's exact text and its reviewers' signatures (version 0 and no entries before the first approval)",
        "responses": { "200": { "description": "Catalog version" } }
      }
    },
    "/v1/catalog/{version}": {
      "get": {
        "summary": "One signed catalog version",
        "parameters": [{ "name": "version", "in": "path", "required": true, "schema": { "type": "integer" } }],
        "responses": { "200": { "description": "Catalog version" }, "400": { "description": "Not a number" }, "404": { "description": "No such version" } }
      }
    },
    "/openapi.json": { "get": { "summary": "This document", "responses": { "200": { "description": "OpenAPI 3.1" } } } },
    "/": { "get": { "summary": "The public dashboard (HTML; Dutch, `?lang=en` for English): every published quarter with its interpretation, and the providers' budgets per data period",
      "parameters": [ { "name": "lang", "in": "query", "required": false, "schema": { "type": "string", "enum": ["nl", "en"] } } ],
      "responses": { "200": { "description": "text/html" }, "500": { "description": "The store could not be read" } } } },
    "/favicon.ico": { "get": { "summary": "No icon (answers so browsers log no error)", "responses": { "204": { "description": "No content" } } } },
    "/healthz": { "get": { "summary": "Liveness", "responses": { "200": { "description": "ok" } } } },
    "/metrics": { "get": { "summary": "Prometheus metrics", "responses": { "200": { "description": "text/plain; version=0.0.4" } } } }
  }
}"##;

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    /// The document describes exactly the routes the router serves: every (path, method) of the
    /// router's table is documented, and every documented one is served; each documents its
    /// responses.
    #[test]
    fn the_document_matches_the_router_route_for_route() {
        let doc: serde_json::Value = serde_json::from_str(super::DOCUMENT).expect("valid JSON");
        let mut documented = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, op) in item.as_object().expect("path item") {
                let responses = op["responses"].as_object();
                assert!(
                    responses.is_some_and(|r| !r.is_empty()),
                    "{method} {path} documents no responses"
                );
                documented.insert((path.clone(), method.to_uppercase()));
            }
        }
        let served: BTreeSet<(String, String)> = crate::server::route_list()
            .into_iter()
            .map(|(p, m)| (p.to_string(), m.to_string()))
            .collect();
        let undocumented: Vec<_> = served.difference(&documented).collect();
        let unserved: Vec<_> = documented.difference(&served).collect();
        assert!(
            undocumented.is_empty() && unserved.is_empty(),
            "served but not documented: {undocumented:?}; documented but not served: {unserved:?}"
        );
    }
}
