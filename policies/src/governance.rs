//! Governance wire types and signatures: how an approved indicator travels from the reviewers who
//! approved it to the nodes that must check that approval themselves.
//!
//! A reviewer signs (ed25519) a fixed message naming the indicator id and the sha256 of its TOML
//! bytes. A catalog version lists signed indicators; each entry carries its own signatures, so a
//! node verifies every indicator on its own and any change to an entry's text breaks its signatures.
//! The coordinator never holds a reviewer's private key: it relays signatures, it cannot make them.

use ring::rand::SystemRandom;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// What a reviewer signs to approve indicator `id` with content hash `content_hash`.
pub fn approval_message(id: &str, content_hash: &str) -> Vec<u8> {
    format!("stroom indicator approval v1\nindicator={id}\ncontent_sha256={content_hash}\n")
        .into_bytes()
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum KeyError {
    #[error("cannot make a key pair: {0}")]
    Generate(String),
    #[error("not a stroom signing key (expected hex-encoded PKCS#8 ed25519): {0}")]
    BadPrivateKey(String),
    #[error("not an ed25519 public key (expected 64 hex characters): {0}")]
    BadPublicKey(String),
}

/// A reviewer's signing key. The file form is one line: the hex of its PKCS#8 document.
pub struct SigningKey {
    pair: Ed25519KeyPair,
}

impl SigningKey {
    /// A fresh key pair and its file form.
    pub fn generate() -> Result<(SigningKey, String), KeyError> {
        let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .map_err(|e| KeyError::Generate(e.to_string()))?;
        let text = hex::encode(doc.as_ref());
        Ok((SigningKey::from_text(&text)?, text))
    }

    pub fn from_text(text: &str) -> Result<SigningKey, KeyError> {
        let bytes = hex::decode(text.trim()).map_err(|e| KeyError::BadPrivateKey(e.to_string()))?;
        let pair = Ed25519KeyPair::from_pkcs8(&bytes)
            .map_err(|e| KeyError::BadPrivateKey(e.to_string()))?;
        Ok(SigningKey { pair })
    }

    /// Hex of the 32-byte public key, as reviewers register it and nodes list it.
    pub fn public_key_hex(&self) -> String {
        hex::encode(self.pair.public_key().as_ref())
    }

    /// Hex of the signature over the approval message of (`id`, `content_hash`).
    pub fn sign_approval(&self, id: &str, content_hash: &str) -> String {
        self.sign(&approval_message(id, content_hash))
    }

    /// Hex of the signature over `message` (a node signs its secure reports with this).
    pub fn sign(&self, message: &[u8]) -> String {
        hex::encode(self.pair.sign(message).as_ref())
    }
}

/// Whether `signature_hex` is `public_key_hex`'s ed25519 signature over `message`.
pub fn verify_signature(public_key_hex: &str, message: &[u8], signature_hex: &str) -> bool {
    let (Ok(key), Ok(sig)) = (
        parse_public_key(public_key_hex),
        hex::decode(signature_hex.trim()),
    ) else {
        return false;
    };
    UnparsedPublicKey::new(&ED25519, key)
        .verify(message, &sig)
        .is_ok()
}

/// Checks a public key's form: 32 bytes as 64 hex characters.
pub fn parse_public_key(hex_key: &str) -> Result<Vec<u8>, KeyError> {
    let bytes = hex::decode(hex_key.trim()).map_err(|e| KeyError::BadPublicKey(e.to_string()))?;
    if bytes.len() != 32 {
        return Err(KeyError::BadPublicKey(format!(
            "{} bytes, expected 32",
            bytes.len()
        )));
    }
    Ok(bytes)
}

/// Whether `signature_hex` is `public_key_hex`'s signature approving (`id`, `content_hash`).
pub fn verify_approval(
    public_key_hex: &str,
    id: &str,
    content_hash: &str,
    signature_hex: &str,
) -> bool {
    verify_signature(
        public_key_hex,
        &approval_message(id, content_hash),
        signature_hex,
    )
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReviewerSignature {
    pub reviewer: String,
    pub public_key: String,
    pub signature: String,
    pub signed_at: String,
}

/// One approved indicator as nodes receive it: its exact text and the reviewers' signatures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SignedIndicator {
    pub id: String,
    /// The indicator's TOML, byte for byte as approved.
    pub toml: String,
    /// sha256 of `toml` as the approvers saw it; a node recomputes it and never trusts this field.
    pub content_hash: String,
    pub proposal: String,
    pub signatures: Vec<ReviewerSignature>,
}

/// A version of the governed catalog: every indicator approved so far, newest version last.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CatalogVersion {
    pub version: u64,
    pub created_at: String,
    pub entries: Vec<SignedIndicator>,
}

/// A reviewer key a node trusts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustedKey {
    pub name: String,
    pub public_key: String,
}

/// Why a node will not take a signed indicator.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SignatureRefusal {
    #[error("indicator '{0}' is unsigned: no reviewer signature came with it")]
    Unsigned(String),
    #[error(
        "indicator '{id}' was altered after signing: the signature of trusted reviewer '{reviewer}' does not match its content (sha256 {content_hash})"
    )]
    Altered {
        id: String,
        reviewer: String,
        content_hash: String,
    },
    #[error(
        "indicator '{id}' is signed only by keys this node does not trust ({signers}); it needs {required} trusted reviewer signature(s)"
    )]
    UnknownKeys {
        id: String,
        signers: String,
        required: usize,
    },
    #[error(
        "indicator '{id}' carries {valid} valid signature(s) from distinct trusted reviewers; this node requires {required}"
    )]
    TooFewSignatures {
        id: String,
        valid: usize,
        required: usize,
    },
}

impl SignatureRefusal {
    pub fn code(&self) -> &'static str {
        match self {
            SignatureRefusal::Unsigned(_) => "unsigned_indicator",
            SignatureRefusal::Altered { .. } => "altered_indicator",
            SignatureRefusal::UnknownKeys { .. } => "unknown_signers",
            SignatureRefusal::TooFewSignatures { .. } => "too_few_signatures",
        }
    }
}

/// Checks an entry against the node's own trusted keys: the content hash is recomputed from the
/// text, each signature by a trusted key must verify over it, and at least `required` distinct
/// trusted keys must have signed. Returns the recomputed content hash.
pub fn verify_entry(
    entry: &SignedIndicator,
    trusted: &[TrustedKey],
    required: usize,
) -> Result<String, SignatureRefusal> {
    let content_hash = crate::indicator::content_hash(entry.toml.as_bytes());
    if entry.signatures.is_empty() {
        return Err(SignatureRefusal::Unsigned(entry.id.clone()));
    }
    let mut valid_keys = BTreeSet::new();
    let mut unknown = Vec::new();
    for s in &entry.signatures {
        let key = s.public_key.trim().to_ascii_lowercase();
        let Some(t) = trusted
            .iter()
            .find(|t| t.public_key.trim().to_ascii_lowercase() == key)
        else {
            unknown.push(s.reviewer.clone());
            continue;
        };
        if !verify_approval(&key, &entry.id, &content_hash, &s.signature) {
            return Err(SignatureRefusal::Altered {
                id: entry.id.clone(),
                reviewer: t.name.clone(),
                content_hash,
            });
        }
        valid_keys.insert(key);
    }
    if valid_keys.is_empty() {
        return Err(SignatureRefusal::UnknownKeys {
            id: entry.id.clone(),
            signers: unknown.join(", "),
            required,
        });
    }
    if valid_keys.len() < required {
        return Err(SignatureRefusal::TooFewSignatures {
            id: entry.id.clone(),
            valid: valid_keys.len(),
            required,
        });
    }
    Ok(content_hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signed(toml: &str, keys: &[(&str, &SigningKey)]) -> SignedIndicator {
        let hash = crate::indicator::content_hash(toml.as_bytes());
        SignedIndicator {
            id: "x".into(),
            toml: toml.into(),
            content_hash: hash.clone(),
            proposal: "p".into(),
            signatures: keys
                .iter()
                .map(|(name, k)| ReviewerSignature {
                    reviewer: name.to_string(),
                    public_key: k.public_key_hex(),
                    signature: k.sign_approval("x", &hash),
                    signed_at: String::new(),
                })
                .collect(),
        }
    }

    fn trust(keys: &[(&str, &SigningKey)]) -> Vec<TrustedKey> {
        keys.iter()
            .map(|(n, k)| TrustedKey {
                name: n.to_string(),
                public_key: k.public_key_hex(),
            })
            .collect()
    }

    #[test]
    fn two_trusted_signatures_verify() {
        let (a, _) = SigningKey::generate().unwrap();
        let (b, _) = SigningKey::generate().unwrap();
        let e = signed("id = 'x'", &[("a", &a), ("b", &b)]);
        assert!(verify_entry(&e, &trust(&[("a", &a), ("b", &b)]), 2).is_ok());
    }

    #[test]
    fn each_refusal_is_specific() {
        let (a, _) = SigningKey::generate().unwrap();
        let (b, _) = SigningKey::generate().unwrap();
        let (stranger, _) = SigningKey::generate().unwrap();
        let trusted = trust(&[("a", &a), ("b", &b)]);

        let unsigned = signed("id = 'x'", &[]);
        assert_eq!(
            verify_entry(&unsigned, &trusted, 2).unwrap_err().code(),
            "unsigned_indicator"
        );

        let mut altered = signed("id = 'x'", &[("a", &a), ("b", &b)]);
        altered.toml.push_str("\n# one more line");
        assert_eq!(
            verify_entry(&altered, &trusted, 2).unwrap_err().code(),
            "altered_indicator"
        );

        let strangers = signed("id = 'x'", &[("s", &stranger)]);
        assert_eq!(
            verify_entry(&strangers, &trusted, 2).unwrap_err().code(),
            "unknown_signers"
        );

        // The same trusted key twice is one reviewer, not two.
        let twice = signed("id = 'x'", &[("a", &a), ("a again", &a), ("s", &stranger)]);
        assert_eq!(
            verify_entry(&twice, &trusted, 2).unwrap_err(),
            SignatureRefusal::TooFewSignatures {
                id: "x".into(),
                valid: 1,
                required: 2
            }
        );
    }

    #[test]
    fn a_signature_for_another_indicator_does_not_transfer() {
        let (a, _) = SigningKey::generate().unwrap();
        let hash = crate::indicator::content_hash(b"t");
        let sig = a.sign_approval("other", &hash);
        assert!(!verify_approval(&a.public_key_hex(), "x", &hash, &sig));
        assert!(verify_approval(&a.public_key_hex(), "other", &hash, &sig));
    }

    #[test]
    fn key_file_round_trips_and_bad_keys_are_named() {
        let (k, text) = SigningKey::generate().unwrap();
        let again = SigningKey::from_text(&text).unwrap();
        assert_eq!(k.public_key_hex(), again.public_key_hex());
        assert!(matches!(
            SigningKey::from_text("zz"),
            Err(KeyError::BadPrivateKey(_))
        ));
        assert!(matches!(
            parse_public_key("abcd"),
            Err(KeyError::BadPublicKey(_))
        ));
    }
}
