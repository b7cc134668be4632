//! A node's report, end to end: shard the noisy vector (Prio3), seal the helper's share (HPKE,
//! the binding as associated data), sign binding + public share + sealed share (ed25519), and on
//! the helper's side check all three before any share is used.

use crate::seal::{HelperPrivateKey, HelperPublicKey, SealError};
use crate::vdaf::{NONCE_LEN, Shape, VdafError, parse_nonce, unhex};
use policies::governance::{SigningKey, verify_signature};
use policies::wire::{ReportBinding, SealedShare, SecureMeasure, SecureShares};

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Vdaf(#[from] VdafError),
    #[error(transparent)]
    Seal(#[from] SealError),
    #[error("report from {0}: the node is not in the helper's roster")]
    UnknownNode(String),
    #[error("report from {0}: its signature does not verify with the node's registered key")]
    BadSignature(String),
    #[error("report binding: {0}")]
    Binding(String),
}

/// The associated data of the helper's share: the binding's canonical JSON (fields in their
/// declared order).
pub fn binding_bytes(binding: &ReportBinding) -> Vec<u8> {
    // A struct of strings and integers always serialises.
    serde_json::to_vec(binding).unwrap_or_default()
}

/// What a node signs: everything of its report that reaches the helper.
pub fn signed_message(
    binding: &ReportBinding,
    public_share: &str,
    sealed: &SealedShare,
) -> Vec<u8> {
    let mut m = b"stroom secure report v1\n".to_vec();
    m.extend(binding_bytes(binding));
    for part in [
        public_share,
        sealed.encapsulated_key.as_str(),
        sealed.ciphertext.as_str(),
    ] {
        m.push(b'\n');
        m.extend(part.as_bytes());
    }
    m
}

/// The node's side: `values` are the noisy, scaled integers, measure after measure.
pub fn make(
    binding: ReportBinding,
    values: &[i64],
    measures: Vec<SecureMeasure>,
    helper: &HelperPublicKey,
    signer: &SigningKey,
) -> Result<SecureShares, ReportError> {
    if values.len() != binding.length as usize {
        return Err(ReportError::Binding(format!(
            "{} values for a binding of length {}",
            values.len(),
            binding.length
        )));
    }
    let shape = Shape::new(binding.bits, binding.length as usize)?;
    let nonce: [u8; NONCE_LEN] = parse_nonce(&binding.nonce)?;
    let sharded = shape.shard(values, &nonce)?;
    let (enc, ct) = helper.seal(&sharded.helper_share, &binding_bytes(&binding))?;
    let sealed = SealedShare {
        encapsulated_key: hex::encode(enc),
        ciphertext: hex::encode(ct),
    };
    let public_share = hex::encode(&sharded.public_share);
    let signature = signer.sign(&signed_message(&binding, &public_share, &sealed));
    Ok(SecureShares {
        binding,
        public_share,
        leader_share: hex::encode(&sharded.leader_share),
        helper_share: sealed,
        signature,
        measures,
        // Stated by the node after sharding; not part of the signed binding.
        max_units: 0,
    })
}

/// The helper's side: the signature against the roster's key for the node, then the sealed
/// share against the binding. Returns the helper's input share.
pub fn open(
    binding: &ReportBinding,
    public_share: &str,
    sealed: &SealedShare,
    signature: &str,
    node_key: Option<&str>,
    helper: &HelperPrivateKey,
) -> Result<Vec<u8>, ReportError> {
    let key = node_key.ok_or_else(|| ReportError::UnknownNode(binding.node_id.clone()))?;
    if !verify_signature(
        key,
        &signed_message(binding, public_share, sealed),
        signature,
    ) {
        return Err(ReportError::BadSignature(binding.node_id.clone()));
    }
    let enc = unhex("encapsulated key", &sealed.encapsulated_key)?;
    let ct = unhex("sealed share", &sealed.ciphertext)?;
    Ok(helper.open(&enc, &ct, &binding_bytes(binding))?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vdaf::{VERIFY_KEY_LEN, random_bytes};

    fn binding(node: &str) -> ReportBinding {
        ReportBinding {
            node_id: node.into(),
            indicator: "care.unique_youths".into(),
            content_hash: "abc".into(),
            period: "2024Q1".parse().expect("period"),
            release_key: "rk".into(),
            nodes: 11,
            max_missing: 1,
            bits: 32,
            length: 3,
            granularity: vec![1],
            nonce: hex::encode(random_bytes::<NONCE_LEN>().expect("nonce")),
            created_at: 0,
            helper_key_id: None,
        }
    }

    #[test]
    fn a_report_opens_at_the_helper_and_verifies() {
        let (sk, pk) = HelperPrivateKey::generate();
        let (sk, pk) = (
            HelperPrivateKey::from_hex(&sk).expect("sk"),
            HelperPublicKey::from_hex(&pk).expect("pk"),
        );
        let (signer, _) = SigningKey::generate().expect("signing key");
        let node_key = signer.public_key_hex();
        let r = make(binding("P01"), &[5, -3, 77], vec![], &pk, &signer).expect("report");
        let helper_share = open(
            &r.binding,
            &r.public_share,
            &r.helper_share,
            &r.signature,
            Some(&node_key),
            &sk,
        )
        .expect("opens");
        let shape = Shape::new(32, 3).expect("shape");
        let key = random_bytes::<VERIFY_KEY_LEN>().expect("key");
        let nonce = parse_nonce(&r.binding.nonce).expect("nonce");
        let public = hex::decode(&r.public_share).expect("hex");
        let leader = hex::decode(&r.leader_share).expect("hex");
        let (state, vs) = shape
            .leader_init(&key, &nonce, &public, &leader)
            .expect("init");
        let (out, msg) = shape
            .helper_verify(&key, &nonce, &public, &helper_share, &vs)
            .expect("verify");
        let l = shape
            .aggregate([shape.leader_finish(state, &msg).expect("finish")])
            .expect("agg");
        let h = shape
            .aggregate([shape.decode_output_share(&out).expect("out")])
            .expect("agg");
        let sum = shape.decode_sum(&shape.unshard(l, h, 1).expect("unshard"), 1);
        assert_eq!(sum, vec![5, -3, 77]);
    }

    #[test]
    fn forged_moved_or_unknown_reports_are_refused() {
        let (sk, pk) = HelperPrivateKey::generate();
        let (sk, pk) = (
            HelperPrivateKey::from_hex(&sk).expect("sk"),
            HelperPublicKey::from_hex(&pk).expect("pk"),
        );
        let (signer, _) = SigningKey::generate().expect("key");
        let (forger, _) = SigningKey::generate().expect("key");
        let key = signer.public_key_hex();
        let r = make(binding("P01"), &[1, 2, 3], vec![], &pk, &signer).expect("report");
        let open_as = |b: &ReportBinding, sig: &str, k: Option<&str>| {
            open(b, &r.public_share, &r.helper_share, sig, k, &sk)
        };
        // The coordinator cannot make a report of its own for a node...
        let forged = make(binding("P01"), &[0, 0, 0], vec![], &pk, &forger).expect("report");
        assert!(matches!(
            open(
                &forged.binding,
                &forged.public_share,
                &forged.helper_share,
                &forged.signature,
                Some(&key),
                &sk
            ),
            Err(ReportError::BadSignature(_))
        ));
        // ...nor claim another run size or node for a real one.
        let mut bigger = r.binding.clone();
        bigger.nodes = 1000;
        assert!(matches!(
            open_as(&bigger, &r.signature, Some(&key)),
            Err(ReportError::BadSignature(_))
        ));
        let mut other = r.binding.clone();
        other.node_id = "P02".into();
        assert!(matches!(
            open_as(&other, &r.signature, Some(&key)),
            Err(ReportError::BadSignature(_))
        ));
        assert!(matches!(
            open_as(&r.binding, &r.signature, None),
            Err(ReportError::UnknownNode(_))
        ));
        assert!(open_as(&r.binding, &r.signature, Some(&key)).is_ok());
    }
}
