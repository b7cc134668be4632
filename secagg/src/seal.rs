//! The helper's input share travels through the coordinator sealed to the helper's public key
//! (HPKE, RFC 9180: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305), as DAP does. The
//! report's binding is the associated data: a share moved to another node, release or run size
//! fails to open. Nodes take the helper's key from their own configuration, never from the
//! coordinator.

use hpke::aead::ChaCha20Poly1305;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, Kem as _, OpModeR, OpModeS, Serializable};
use policies::wire::SealedShare;

/// HPKE's `info`: which protocol and message this is. Each kind of message sealed to the helper
/// has its own, so one can never be opened as the other.
const INFO: &[u8] = b"stroom helper input share v1";
const VERIFY_KEY_INFO: &[u8] = b"stroom aggregators verification key v1";
const VERIFY_KEY_AAD: &[u8] = b"stroom aggregators verification key";

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

    /// `sha256:` and the hex SHA-256 of the key's bytes: what the helper's operator publishes and
    /// each node's operator compares out of band before trusting a key file.
    pub fn fingerprint(&self) -> String {
        use sha2::Digest;
        format!(
            "sha256:{}",
            hex::encode(sha2::Sha256::digest(self.0.to_bytes()))
        )
    }

    /// The key's id (the fingerprint's first 8 bytes): what a request names and a report binds.
    pub fn key_id(&self) -> policies::wire::KeyId {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(self.0.to_bytes());
        let mut id = [0u8; 8];
        id.copy_from_slice(&digest[..8]);
        policies::wire::KeyId(id)
    }

    /// (encapsulated key, ciphertext) of `plaintext` with `aad` bound to it.
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Result<(Vec<u8>, Vec<u8>), SealError> {
        self.seal_with(INFO, plaintext, aad)
    }

    /// The aggregators' shared verification key, sealed by the coordinator to the helper: it
    /// travels over any channel, since only the helper's private key opens it.
    pub fn seal_verify_key(&self, key: &[u8]) -> Result<SealedShare, SealError> {
        let (enc, ct) = self.seal_with(VERIFY_KEY_INFO, key, VERIFY_KEY_AAD)?;
        Ok(SealedShare {
            encapsulated_key: hex::encode(enc),
            ciphertext: hex::encode(ct),
        })
    }

    fn seal_with(
        &self,
        info: &[u8],
        plaintext: &[u8],
        aad: &[u8],
    ) -> Result<(Vec<u8>, Vec<u8>), SealError> {
        let (enc, ct) = hpke::single_shot_seal::<ChaCha20Poly1305, HkdfSha256, X25519HkdfSha256>(
            &OpModeS::Base,
            &self.0,
            info,
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
        self.open_with(INFO, encapsulated, ciphertext, aad)
    }

    /// The verification key the coordinator sealed with [`HelperPublicKey::seal_verify_key`].
    pub fn open_verify_key(&self, sealed: &SealedShare) -> Result<Vec<u8>, SealError> {
        let enc = key_bytes("encapsulated", &sealed.encapsulated_key)?;
        let ct = hex::decode(sealed.ciphertext.trim()).map_err(|_| SealError::Open)?;
        self.open_with(VERIFY_KEY_INFO, &enc, &ct, VERIFY_KEY_AAD)
    }

    fn open_with(
        &self,
        info: &[u8],
        encapsulated: &[u8],
        ciphertext: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>, SealError> {
        let enc = Encapped::from_bytes(encapsulated).map_err(|_| SealError::Open)?;
        hpke::single_shot_open::<ChaCha20Poly1305, HkdfSha256, X25519HkdfSha256>(
            &OpModeR::Base,
            &self.0,
            &enc,
            info,
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
    fn a_sealed_verification_key_opens_only_at_its_helper_and_never_as_a_share() {
        let (sk, pk) = HelperPrivateKey::generate();
        let sk = HelperPrivateKey::from_hex(&sk).expect("private key");
        let pk = HelperPublicKey::from_hex(&pk).expect("public key");
        let sealed = pk.seal_verify_key(&[7u8; 32]).expect("seal");
        assert_eq!(sk.open_verify_key(&sealed).expect("open"), vec![7u8; 32]);
        let (other, _) = HelperPrivateKey::generate();
        let other = HelperPrivateKey::from_hex(&other).expect("key");
        assert!(matches!(
            other.open_verify_key(&sealed),
            Err(SealError::Open)
        ));
        // Another purpose's `info`: a sealed key is not a helper share, nor the reverse.
        let enc = hex::decode(&sealed.encapsulated_key).expect("hex");
        let ct = hex::decode(&sealed.ciphertext).expect("hex");
        assert!(matches!(
            sk.open(&enc, &ct, VERIFY_KEY_AAD),
            Err(SealError::Open)
        ));
        let (enc, ct) = pk.seal(&[7u8; 32], VERIFY_KEY_AAD).expect("seal");
        let as_share = SealedShare {
            encapsulated_key: hex::encode(enc),
            ciphertext: hex::encode(ct),
        };
        assert!(matches!(
            sk.open_verify_key(&as_share),
            Err(SealError::Open)
        ));
        assert!(pk.fingerprint().starts_with("sha256:"));
        assert_eq!(pk.fingerprint().len(), 7 + 64);
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
