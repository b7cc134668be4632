//! Proposals and the signed catalog, in the run store. A researcher proposes an indicator; reviewers
//! other than the proposer approve it with their ed25519 signature or reject it with a reason; the
//! approval that reaches the required number makes a new catalog version holding every approved
//! indicator with its signatures. Every state change is one SQLite transaction.

use crate::store::{RunStore, StoreError};
use policies::governance::{CatalogVersion, ReviewerSignature, SignedIndicator};
use rusqlite::{OptionalExtension, TransactionBehavior, params};
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProposalStatus {
    Pending,
    Approved,
    Rejected,
}

impl ProposalStatus {
    fn as_str(&self) -> &'static str {
        match self {
            ProposalStatus::Pending => "pending",
            ProposalStatus::Approved => "approved",
            ProposalStatus::Rejected => "rejected",
        }
    }

    fn parse(s: &str) -> ProposalStatus {
        match s {
            "approved" => ProposalStatus::Approved,
            "rejected" => ProposalStatus::Rejected,
            _ => ProposalStatus::Pending,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Rejection {
    pub reviewer: String,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Proposal {
    pub id: String,
    pub indicator: String,
    pub content_hash: String,
    pub toml: String,
    pub purpose: String,
    pub proposed_by: String,
    pub status: ProposalStatus,
    pub created_at: String,
    pub decided_at: Option<String>,
    pub approvals: Vec<ReviewerSignature>,
    pub rejection: Option<Rejection>,
    /// The catalog version that first held this indicator, once approved.
    pub catalog_version: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum GovernanceError {
    #[error("no proposal with id {0}")]
    UnknownProposal(String),
    #[error("proposal {id} is {status}; only pending proposals can be decided")]
    NotPending { id: String, status: &'static str },
    #[error(
        "{0} proposed this indicator and may not approve it: approvals must come from other reviewers"
    )]
    OwnProposal(String),
    #[error(
        "{reviewer} already approved proposal {id}; approvals must come from distinct reviewers"
    )]
    AlreadyApproved { id: String, reviewer: String },
    #[error("indicator '{0}' is already in the catalog")]
    AlreadyInCatalog(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<rusqlite::Error> for GovernanceError {
    fn from(e: rusqlite::Error) -> Self {
        GovernanceError::Store(StoreError::Sql(e))
    }
}

/// What an approval did.
#[derive(Debug, Clone, Serialize)]
pub struct ApprovalOutcome {
    pub approvals: usize,
    pub required: usize,
    /// The new catalog version when this approval completed the proposal.
    pub catalog_version: Option<u64>,
}

pub const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS reviewer_keys (
        name TEXT PRIMARY KEY,
        public_key TEXT NOT NULL,
        registered_at TEXT NOT NULL
    );
    CREATE TABLE IF NOT EXISTS proposals (
        id TEXT PRIMARY KEY,
        indicator TEXT NOT NULL,
        toml TEXT NOT NULL,
        content_hash TEXT NOT NULL,
        purpose TEXT NOT NULL,
        proposed_by TEXT NOT NULL,
        status TEXT NOT NULL,
        created_at TEXT NOT NULL,
        decided_at TEXT,
        rejected_by TEXT,
        reason TEXT,
        catalog_version INTEGER
    );
    CREATE TABLE IF NOT EXISTS approvals (
        proposal_id TEXT NOT NULL REFERENCES proposals(id),
        reviewer TEXT NOT NULL,
        public_key TEXT NOT NULL,
        signature TEXT NOT NULL,
        signed_at TEXT NOT NULL,
        PRIMARY KEY (proposal_id, reviewer)
    );
    CREATE TABLE IF NOT EXISTS catalog_versions (
        version INTEGER PRIMARY KEY,
        created_at TEXT NOT NULL,
        body TEXT NOT NULL
    );";

impl RunStore {
    /// Registers (or replaces) the public key a reviewer signs approvals with.
    pub fn set_reviewer_key(&self, name: &str, public_key: &str) -> Result<(), StoreError> {
        self.conn()?.execute(
            "INSERT INTO reviewer_keys (name, public_key, registered_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (name) DO UPDATE SET public_key = excluded.public_key,
                 registered_at = excluded.registered_at",
            params![name, public_key.trim().to_ascii_lowercase(), self.now()],
        )?;
        Ok(())
    }

    pub fn reviewer_key(&self, name: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn()?
            .query_row(
                "SELECT public_key FROM reviewer_keys WHERE name = ?1",
                params![name],
                |r| r.get(0),
            )
            .optional()?)
    }

    pub fn create_proposal(
        &self,
        indicator: &str,
        toml: &str,
        purpose: &str,
        proposed_by: &str,
    ) -> Result<Proposal, StoreError> {
        let id = format!("p-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let p = Proposal {
            id,
            indicator: indicator.to_string(),
            content_hash: policies::indicator::content_hash(toml.as_bytes()),
            toml: toml.to_string(),
            purpose: purpose.to_string(),
            proposed_by: proposed_by.to_string(),
            status: ProposalStatus::Pending,
            created_at: self.now(),
            decided_at: None,
            approvals: Vec::new(),
            rejection: None,
            catalog_version: None,
        };
        self.conn()?.execute(
            "INSERT INTO proposals (id, indicator, toml, content_hash, purpose, proposed_by, status, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'pending', ?7)",
            params![p.id, p.indicator, p.toml, p.content_hash, p.purpose, p.proposed_by, p.created_at],
        )?;
        Ok(p)
    }

    fn approvals_of(
        conn: &rusqlite::Connection,
        id: &str,
    ) -> Result<Vec<ReviewerSignature>, rusqlite::Error> {
        let mut stmt = conn.prepare(
            "SELECT reviewer, public_key, signature, signed_at FROM approvals
             WHERE proposal_id = ?1 ORDER BY signed_at, reviewer",
        )?;
        let rows = stmt.query_map(params![id], |r| {
            Ok(ReviewerSignature {
                reviewer: r.get(0)?,
                public_key: r.get(1)?,
                signature: r.get(2)?,
                signed_at: r.get(3)?,
            })
        })?;
        rows.collect()
    }

    fn proposal_in(
        conn: &rusqlite::Connection,
        id: &str,
    ) -> Result<Option<Proposal>, rusqlite::Error> {
        let p = conn
            .query_row(
                "SELECT id, indicator, content_hash, toml, purpose, proposed_by, status, created_at,
                        decided_at, rejected_by, reason, catalog_version
                 FROM proposals WHERE id = ?1",
                params![id],
                |r| {
                    let status: String = r.get(6)?;
                    let rejected_by: Option<String> = r.get(9)?;
                    let reason: Option<String> = r.get(10)?;
                    Ok(Proposal {
                        id: r.get(0)?,
                        indicator: r.get(1)?,
                        content_hash: r.get(2)?,
                        toml: r.get(3)?,
                        purpose: r.get(4)?,
                        proposed_by: r.get(5)?,
                        status: ProposalStatus::parse(&status),
                        created_at: r.get(7)?,
                        decided_at: r.get(8)?,
                        approvals: Vec::new(),
                        rejection: rejected_by.map(|reviewer| Rejection {
                            reviewer,
                            reason: reason.unwrap_or_default(),
                        }),
                        catalog_version: r.get::<_, Option<i64>>(11)?.map(|v| v as u64),
                    })
                },
            )
            .optional()?;
        match p {
            Some(mut p) => {
                p.approvals = Self::approvals_of(conn, id)?;
                Ok(Some(p))
            }
            None => Ok(None),
        }
    }

    /// The proposal `id`, which must still be pending: only pending proposals are decided.
    fn pending_in(conn: &rusqlite::Connection, id: &str) -> Result<Proposal, GovernanceError> {
        let p = Self::proposal_in(conn, id)?
            .ok_or_else(|| GovernanceError::UnknownProposal(id.to_string()))?;
        if p.status != ProposalStatus::Pending {
            return Err(GovernanceError::NotPending {
                id: id.to_string(),
                status: p.status.as_str(),
            });
        }
        Ok(p)
    }

    pub fn proposal(&self, id: &str) -> Result<Option<Proposal>, StoreError> {
        let conn = self.conn()?;
        Ok(Self::proposal_in(&conn, id)?)
    }

    pub fn proposals(&self) -> Result<Vec<Proposal>, StoreError> {
        let conn = self.conn()?;
        let ids: Vec<String> = {
            let mut stmt = conn.prepare("SELECT id FROM proposals ORDER BY created_at, id")?;
            stmt.query_map([], |r| r.get(0))?
                .collect::<Result<_, _>>()?
        };
        let mut out = Vec::new();
        for id in ids {
            if let Some(p) = Self::proposal_in(&conn, &id)? {
                out.push(p);
            }
        }
        Ok(out)
    }

    /// Records one reviewer's (already verified) signature. The approval that reaches `required`
    /// distinct reviewers approves the proposal and writes the next catalog version, atomically.
    pub fn approve(
        &self,
        id: &str,
        signature: &ReviewerSignature,
        required: usize,
    ) -> Result<ApprovalOutcome, GovernanceError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let p = Self::pending_in(&tx, id)?;
        if p.proposed_by == signature.reviewer {
            return Err(GovernanceError::OwnProposal(signature.reviewer.clone()));
        }
        if p.approvals.iter().any(|a| a.reviewer == signature.reviewer) {
            return Err(GovernanceError::AlreadyApproved {
                id: id.to_string(),
                reviewer: signature.reviewer.clone(),
            });
        }
        tx.execute(
            "INSERT INTO approvals (proposal_id, reviewer, public_key, signature, signed_at)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                id,
                signature.reviewer,
                signature.public_key,
                signature.signature,
                signature.signed_at
            ],
        )?;
        let approvals = p.approvals.len() + 1;
        let mut catalog_version = None;
        if approvals >= required {
            let current = Self::latest_catalog_in(&tx)?;
            if current.entries.iter().any(|e| e.id == p.indicator) {
                return Err(GovernanceError::AlreadyInCatalog(p.indicator));
            }
            let mut entries = current.entries;
            let mut signatures = p.approvals.clone();
            signatures.push(signature.clone());
            entries.push(SignedIndicator {
                id: p.indicator.clone(),
                toml: p.toml.clone(),
                content_hash: p.content_hash.clone(),
                proposal: p.id.clone(),
                signatures,
            });
            let next = CatalogVersion {
                version: current.version + 1,
                created_at: self.now(),
                entries,
            };
            tx.execute(
                "INSERT INTO catalog_versions (version, created_at, body) VALUES (?1, ?2, ?3)",
                params![
                    next.version as i64,
                    next.created_at,
                    serde_json::to_string(&next).map_err(StoreError::Json)?
                ],
            )?;
            tx.execute(
                "UPDATE proposals SET status = 'approved', decided_at = ?2, catalog_version = ?3
                 WHERE id = ?1",
                params![id, next.created_at, next.version as i64],
            )?;
            catalog_version = Some(next.version);
        }
        tx.commit()?;
        Ok(ApprovalOutcome {
            approvals,
            required,
            catalog_version,
        })
    }

    pub fn reject(&self, id: &str, reviewer: &str, reason: &str) -> Result<(), GovernanceError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        Self::pending_in(&tx, id)?;
        tx.execute(
            "UPDATE proposals SET status = 'rejected', decided_at = ?2, rejected_by = ?3, reason = ?4
             WHERE id = ?1",
            params![id, self.now(), reviewer, reason],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn latest_catalog_in(conn: &rusqlite::Connection) -> Result<CatalogVersion, GovernanceError> {
        let body: Option<String> = conn
            .query_row(
                "SELECT body FROM catalog_versions ORDER BY version DESC LIMIT 1",
                [],
                |r| r.get(0),
            )
            .optional()?;
        match body {
            Some(b) => Ok(serde_json::from_str(&b).map_err(StoreError::Json)?),
            None => Ok(CatalogVersion {
                version: 0,
                created_at: String::new(),
                entries: Vec::new(),
            }),
        }
    }

    /// The newest catalog version; version 0 (no entries) before any approval.
    pub fn latest_catalog(&self) -> Result<CatalogVersion, GovernanceError> {
        let conn = self.conn()?;
        Self::latest_catalog_in(&conn)
    }

    pub fn catalog_version(&self, version: u64) -> Result<Option<CatalogVersion>, StoreError> {
        let body: Option<String> = self
            .conn()?
            .query_row(
                "SELECT body FROM catalog_versions WHERE version = ?1",
                params![version as i64],
                |r| r.get(0),
            )
            .optional()?;
        Ok(match body {
            Some(b) => Some(serde_json::from_str(&b)?),
            None => None,
        })
    }
}
