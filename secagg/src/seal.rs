//! The helper's input share travels through the coordinator sealed to the helper's public key
//! (HPKE, RFC 9180: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305), as DAP does. The
//! report's binding is the associated data: a share moved to another node, release or run size
//! fails to open. Nodes take the helper's key from their own configuration, never from the
//! coordinator.

use hpke::aead::ChaCha20Poly1305;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, Kem as _, OpModeR, OpModeS, Serializable};

/// HPKE's `info`: which protocol and message this is.
const INFO: &[u8] = b"stroom helper input share v1";

type KemPublic = <X25519HkdfSha256 as hpke::Kem>::PublicKey;
type KemPrivate = <X25519HkdfSha256 as hpke::Kem>::PrivateKey;
type Encapped = <X25519HkdfSha256 as hpke::Kem>::EncappedKey;

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("not an HPKE {what} key (expected 64 hex characters): {message}")]
    BadKey { what: &'static str, message: String },
    #[error("sealing the helper's share: {0}")]
    Seal(String),
    #[error(
        "the helper's share does not open: wrong key, or the share was altered or moved to another report"
    )]
    Open,
}

fn key_bytes(what: &'static str, text: &str) -> Result<Vec<u8>, SealError> {
    hex::decode(text.trim()).map_err(|e| SealError::BadKey {
        what,
        message: e.to_string(),
    })
}

/// The helper's public key, as nodes configure it.
#[derive(Clone)]
pub struct HelperPublicKey(KemPublic);

impl HelperPublicKey {
    pub fn from_hex(text: &str) -> Result<Self, SealError> {
        let bytes = key_bytes("public", text)?;
        KemPublic::from_bytes(&bytes)
            .map(HelperPublicKey)
            .map_err(|e| SealError::BadKey {
                what: "public",
                message: e.to_string(),
            })
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0.to_bytes())
    }

    /// (encapsulated key, ciphertext) of `plaintext` with `aad` bound to it.
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Result<(Vec<u8>, Vec<u8>), SealError> {
        let (enc, ct) = hpke::single_shot_seal::<ChaCha20Poly1305, HkdfSha256, X25519HkdfSha256>(
            &OpModeS::Base,
            &self.0,
            INFO,
            plaintext,
            aad,
        )
        .map_err(|e| SealError::Seal(e.to_string()))?;
        Ok((enc.to_bytes().to_vec(), ct))
    }
}

/// The helper's private key (its file form is hex).
pub struct HelperPrivateKey(KemPrivate);

impl HelperPrivateKey {
    /// A fresh key pair: (private key hex, public key hex).
    pub fn generate() -> (String, String) {
        let (sk, pk) = X25519HkdfSha256::gen_keypair();
        (hex::encode(sk.to_bytes()), hex::encode(pk.to_bytes()))
    }

    pub fn from_hex(text: &str) -> Result<Self, SealError> {
        let bytes = key_bytes("private", text)?;
        KemPrivate::from_bytes(&bytes)
            .map(HelperPrivateKey)
            .map_err(|e| SealError::BadKey {
                what: "private",
                message: e.to_string(),
            })
    }

    pub fn public_key(&self) -> HelperPublicKey {
        HelperPublicKey(X25519HkdfSha256::sk_to_pk(&self.0))
    }

    pub fn open(
        &self,
        encapsulated: &[u8],
        ciphertext: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>, SealError> {
        let enc = Encapped::from_bytes(encapsulated).map_err(|_| SealError::Open)?;
        hpke::single_shot_open::<ChaCha20Poly1305, HkdfSha256, X25519HkdfSha256>(
            &OpModeR::Base,
            &self.0,
            &enc,
            INFO,
            ciphertext,
            aad,
        )
        .map_err(|_| SealError::Open)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_share_opens_only_with_its_key_and_binding() {
        let (sk, pk) = HelperPrivateKey::generate();
        let sk = HelperPrivateKey::from_hex(&sk).expect("private key");
        let pk = HelperPublicKey::from_hex(&pk).expect("public key");
        assert_eq!(sk.public_key().to_hex(), pk.to_hex());
        let (enc, ct) = pk.seal(b"helper share", b"binding A").expect("seal");
        assert!(!ct.windows(12).any(|w| w == b"helper share"));
        assert_eq!(
            sk.open(&enc, &ct, b"binding A").expect("open"),
            b"helper share"
        );
        assert!(matches!(
            sk.open(&enc, &ct, b"binding B"),
            Err(SealError::Open)
        ));
        let (other, _) = HelperPrivateKey::generate();
        let other = HelperPrivateKey::from_hex(&other).expect("key");
        assert!(matches!(
            other.open(&enc, &ct, b"binding A"),
            Err(SealError::Open)
        ));
        let mut bent = ct.clone();
        bent[0] ^= 1;
        assert!(matches!(
            sk.open(&enc, &bent, b"binding A"),
            Err(SealError::Open)
        ));
    }

    #[test]
    fn malformed_keys_are_refused() {
        assert!(matches!(
            HelperPublicKey::from_hex("zz"),
            Err(SealError::BadKey { .. })
        ));
        assert!(matches!(
            HelperPublicKey::from_hex("abcd"),
            Err(SealError::BadKey { .. })
        ));
        assert!(matches!(
            HelperPrivateKey::from_hex(""),
            Err(SealError::BadKey { .. })
        ));
    }
}
