//! `stroom certs`: keys made by their owners. The CA holder makes the federation CA (`certs ca`);
//! each party makes its own private keys and a certificate signing request on its own machine
//! (`certs request`) and sends only the request and its public keys; the CA signs requests for
//! the roles it decides (`certs sign`) and never sees a private key. The coordinator makes the
//! verification key the two aggregators share and seals it to the helper's public key
//! (`certs verify-key`); the helper opens it with its own (`certs open-verify-key`).
//!
//! `stroom certs --out DIR --nodes …` runs that whole flow in one go for a demo or a test, one
//! folder per party (`DIR/ca`, `DIR/coordinator`, `DIR/helper`, `DIR/<node>`): no folder holds
//! another party's private key.

pub mod cli;
pub mod files;
pub mod profile;

pub use files::Existing;
pub use profile::Role;

use anyhow::{Context, Result};
use files::{Secrecy, check_free, read, write};
use rcgen::{CertificateSigningRequestParams, Issuer, KeyPair};
use std::path::{Path, PathBuf};

pub const CA_CERT: &str = "ca.crt";
pub const CA_KEY: &str = "ca.key";
/// The helper's HPKE key pair, made on the helper's machine.
pub const HELPER_HPKE_KEY: &str = "helper.hpke.key";
pub const HELPER_HPKE_PUB: &str = "helper.hpke.pub";
/// The verification key coordinator and helper share (each holds its own copy).
pub const VERIFY_KEY: &str = "aggregators.verify.key";
/// The coordinator's verification key sealed to the helper's HPKE key: safe to send openly.
pub const VERIFY_KEY_SEALED: &str = "aggregators.verify.sealed";
/// The helper's roster of node signing keys (`[[nodes]]` entries), for its `roster` setting.
pub const HELPER_ROSTER: &str = "helper-roster.toml";

pub fn cert_file(role: &Role) -> String {
    format!("{}.crt", role.name())
}

pub fn key_file(role: &Role) -> String {
    format!("{}.key", role.name())
}

pub fn csr_file(role: &Role) -> String {
    format!("{}.csr", role.name())
}

pub fn node_signing_key(node: &str) -> String {
    format!("{node}.sign.key")
}

pub fn node_signing_pub(node: &str) -> String {
    format!("{node}.sign.pub")
}

/// A node's `[[nodes]]` entry for the helper's roster, made with its signing key.
pub fn node_roster_entry(node: &str) -> String {
    format!("{node}.roster.toml")
}

/// What [`request`] wrote, and the helper's key fingerprint to publish.
pub struct Requested {
    pub files: Vec<String>,
    pub hpke_fingerprint: Option<String>,
}

/// The CA holder's folder: `ca.crt` (public, for every party) and `ca.key`.
pub fn make_ca(out: &Path, existing: Existing) -> Result<()> {
    check_free(out, &[CA_CERT.into(), CA_KEY.into()], existing)?;
    let key = KeyPair::generate()?;
    let cert = profile::ca()?.self_signed(&key)?;
    write(&out.join(CA_CERT), &cert.pem(), Secrecy::Public)?;
    write(&out.join(CA_KEY), &key.serialize_pem(), Secrecy::Private)
}

fn requested_files(role: &Role) -> Vec<String> {
    let mut files = vec![key_file(role), csr_file(role)];
    match role {
        Role::Coordinator => {}
        Role::Helper => files.extend([HELPER_HPKE_KEY.into(), HELPER_HPKE_PUB.into()]),
        Role::Node(id) => files.extend([
            node_signing_key(id),
            node_signing_pub(id),
            node_roster_entry(id),
        ]),
    }
    files
}

/// A party's own keys, made on its machine: the TLS key and a request for the CA; a node also its
/// report-signing key pair (and its roster entry for the helper); the helper also its HPKE key
/// pair. Only the `.csr`, `.pub` and roster files leave the folder.
pub fn request(role: &Role, out: &Path, existing: Existing) -> Result<Requested> {
    let files = requested_files(role);
    check_free(out, &files, existing)?;
    let key = KeyPair::generate()?;
    let csr = profile::request(role)?.serialize_request(&key)?;
    write(
        &out.join(key_file(role)),
        &key.serialize_pem(),
        Secrecy::Private,
    )?;
    write(&out.join(csr_file(role)), &csr.pem()?, Secrecy::Public)?;
    let mut hpke_fingerprint = None;
    match role {
        Role::Coordinator => {}
        Role::Helper => {
            let (private, public) = secagg::seal::HelperPrivateKey::generate();
            write(&out.join(HELPER_HPKE_KEY), &private, Secrecy::Private)?;
            write(&out.join(HELPER_HPKE_PUB), &public, Secrecy::Public)?;
            let key = secagg::seal::HelperPublicKey::from_hex(&public)?;
            hpke_fingerprint = Some(key.fingerprint());
        }
        Role::Node(id) => {
            let (key, text) = policies::governance::SigningKey::generate()?;
            write(&out.join(node_signing_key(id)), &text, Secrecy::Private)?;
            write(
                &out.join(node_signing_pub(id)),
                &key.public_key_hex(),
                Secrecy::Public,
            )?;
            write(
                &out.join(node_roster_entry(id)),
                &format!(
                    "\n[[nodes]]\nid = \"{id}\"\npublic_key = \"{}\"\n",
                    key.public_key_hex()
                ),
                Secrecy::Public,
            )?;
        }
    }
    Ok(Requested {
        files,
        hpke_fingerprint,
    })
}

/// The CA signs a party's request for `role`: the certificate's names and usages come from the
/// role (and `extra_dns`), its key from the request, whose signature is checked and whose common
/// name must be the role's. Writes `<name>.crt` and a copy of `ca.crt` into `out`.
pub fn sign(
    ca_dir: &Path,
    csr: &Path,
    role: &Role,
    extra_dns: &[String],
    out: &Path,
    existing: Existing,
) -> Result<PathBuf> {
    check_free(out, &[cert_file(role)], existing)?;
    let mut request = CertificateSigningRequestParams::from_pem(&read(csr)?).map_err(|e| {
        anyhow::anyhow!(
            "{}: not a valid certificate signing request ({e})",
            csr.display()
        )
    })?;
    let asked = request
        .params
        .distinguished_name
        .get(&rcgen::DnType::CommonName)
        .and_then(dn_text);
    anyhow::ensure!(
        asked.as_deref() == Some(role.name()),
        "{}: the request is for '{}', not for {} '{}'; ask its owner for the right request",
        csr.display(),
        asked.as_deref().unwrap_or("no common name"),
        match role {
            Role::Coordinator => "the coordinator",
            Role::Helper => "the helper",
            Role::Node(_) => "node",
        },
        role.name()
    );
    let ca_cert = read(&ca_dir.join(CA_CERT))?;
    let ca_key = KeyPair::from_pem(&read(&ca_dir.join(CA_KEY))?)
        .with_context(|| format!("{}", ca_dir.join(CA_KEY).display()))?;
    let issuer = Issuer::from_ca_cert_pem(&ca_cert, ca_key)
        .with_context(|| format!("{}", ca_dir.join(CA_CERT).display()))?;
    request.params = profile::leaf(role, extra_dns)?;
    let cert = request.signed_by(&issuer)?;
    let path = out.join(cert_file(role));
    write(&path, &cert.pem(), Secrecy::Public)?;
    if std::fs::canonicalize(out).ok() != std::fs::canonicalize(ca_dir).ok() {
        write(&out.join(CA_CERT), &ca_cert, Secrecy::Public)?;
    }
    Ok(path)
}

fn dn_text(v: &rcgen::DnValue) -> Option<String> {
    match v {
        rcgen::DnValue::Utf8String(s) => Some(s.clone()),
        rcgen::DnValue::PrintableString(s) => Some(s.as_str().to_string()),
        rcgen::DnValue::Ia5String(s) => Some(s.as_str().to_string()),
        // `DnValue` is non-exhaustive: a common name in another string type is not one we issue.
        _ => None,
    }
}

/// The coordinator's side: a fresh verification key for the two aggregators, kept in
/// `aggregators.verify.key` and sealed to the helper's HPKE public key in
/// `aggregators.verify.sealed`, which is sent to the helper (only its private key opens it).
pub fn make_verify_key(helper_key: &Path, out: &Path, existing: Existing) -> Result<()> {
    check_free(
        out,
        &[VERIFY_KEY.into(), VERIFY_KEY_SEALED.into()],
        existing,
    )?;
    let helper = secagg::seal::HelperPublicKey::from_hex(&read(helper_key)?)
        .with_context(|| format!("{}", helper_key.display()))?;
    let key = secagg::vdaf::random_bytes::<{ secagg::vdaf::VERIFY_KEY_LEN }>()
        .map_err(|e| anyhow::anyhow!("verification key: {e}"))?;
    let sealed = serde_json::to_string_pretty(&helper.seal_verify_key(&key)?)?;
    write(&out.join(VERIFY_KEY), &hex::encode(key), Secrecy::Private)?;
    write(&out.join(VERIFY_KEY_SEALED), &sealed, Secrecy::Public)
}

/// The helper's side: opens the sealed verification key with its own HPKE private key and keeps
/// it in `aggregators.verify.key`.
pub fn open_verify_key(
    sealed: &Path,
    hpke_key: &Path,
    out: &Path,
    existing: Existing,
) -> Result<()> {
    check_free(out, &[VERIFY_KEY.into()], existing)?;
    let private = secagg::seal::HelperPrivateKey::from_hex(&read(hpke_key)?)
        .with_context(|| format!("{}", hpke_key.display()))?;
    let boxed: policies::wire::SealedShare = serde_json::from_str(&read(sealed)?)
        .with_context(|| format!("{}: not a sealed verification key", sealed.display()))?;
    let key = private.open_verify_key(&boxed).with_context(|| {
        format!(
            "{}: it was sealed to another helper key than {}",
            sealed.display(),
            hpke_key.display()
        )
    })?;
    anyhow::ensure!(
        key.len() == secagg::vdaf::VERIFY_KEY_LEN,
        "{}: holds {} bytes, not a {}-byte verification key",
        sealed.display(),
        key.len(),
        secagg::vdaf::VERIFY_KEY_LEN
    );
    write(&out.join(VERIFY_KEY), &hex::encode(key), Secrecy::Private)
}

/// Copies a public file from one party's folder into another's (what the party would be sent).
fn hand_over(from: &Path, to: &Path) -> Result<()> {
    let name = from.file_name().context("a file to hand over")?;
    write(&to.join(name), &read(from)?, Secrecy::Public)
}

/// The whole provisioning flow in one go, one folder per party under `out`: `ca/`,
/// `coordinator/`, each node's `<id>/` and with `helper` the helper's `helper/`, each made by the
/// same steps the parties take apart. Every folder ends with `ca.crt` and the public material its
/// party needs (a node: the helper's HPKE public key; the helper: the roster of node signing keys).
pub fn federation(out: &Path, nodes: &[String], helper: bool, existing: Existing) -> Result<()> {
    let mut roles = vec![Role::Coordinator];
    for n in nodes {
        roles.push(Role::node(n)?);
    }
    if helper {
        roles.push(Role::Helper);
    }
    let mut seen = std::collections::BTreeSet::new();
    for r in &roles {
        anyhow::ensure!(
            seen.insert(r.name().to_ascii_lowercase()),
            "node '{}' is listed twice",
            r.name()
        );
    }
    if existing == Existing::Refuse {
        let taken: Vec<String> = ["ca"]
            .into_iter()
            .chain(roles.iter().map(Role::name))
            .filter(|d| {
                std::fs::read_dir(out.join(d)).is_ok_and(|mut entries| entries.next().is_some())
            })
            .map(String::from)
            .collect();
        anyhow::ensure!(
            taken.is_empty(),
            "{} already holds the folder(s) {} with keys in them; stroom certs never replaces \
             certificates or keys (a new key would cut its holder off). Choose an empty folder, \
             or move these away first",
            out.display(),
            taken.join(", ")
        );
    }
    let ca_dir = out.join("ca");
    make_ca(&ca_dir, existing)?;
    for role in &roles {
        let dir = out.join(role.name());
        request(role, &dir, existing)?;
        sign(
            &ca_dir,
            &dir.join(csr_file(role)),
            role,
            &[],
            &dir,
            existing,
        )?;
    }
    if helper {
        let helper_dir = out.join(Role::Helper.name());
        let coordinator_dir = out.join(Role::Coordinator.name());
        let helper_pub = helper_dir.join(HELPER_HPKE_PUB);
        make_verify_key(&helper_pub, &coordinator_dir, existing)?;
        open_verify_key(
            &coordinator_dir.join(VERIFY_KEY_SEALED),
            &helper_dir.join(HELPER_HPKE_KEY),
            &helper_dir,
            existing,
        )?;
        let mut roster = String::from(
            "# The nodes whose signed reports the helper accepts (its `roster` setting).\n",
        );
        for n in nodes {
            let node_dir = out.join(n);
            hand_over(&helper_pub, &node_dir)?;
            roster.push_str(&read(&node_dir.join(node_roster_entry(n)))?);
        }
        write(&helper_dir.join(HELPER_ROSTER), &roster, Secrecy::Public)?;
    }
    Ok(())
}
