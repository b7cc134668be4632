//! What each party's certificate says, decided by the CA from the role it signs for, never from
//! what a request asks: names, usages, validity, a random positive serial, and the key identifiers
//! strict RFC 5280 clients (OpenSSL's `-x509_strict`, Python 3.13's default context) require.

use anyhow::Result;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyUsagePurpose, SanType, SerialNumber,
};

/// A party of the federation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    Coordinator,
    Helper,
    Node(String),
}

impl Role {
    /// A node's role, its id checked: it names files, folders and DNS names.
    pub fn node(id: &str) -> Result<Role> {
        anyhow::ensure!(
            !id.is_empty()
                && id.len() <= 63
                && id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
            "node id '{id}' must be 1 to 63 letters, digits, '-' or '_'"
        );
        anyhow::ensure!(
            !["ca", "coordinator", "helper"].contains(&id.to_ascii_lowercase().as_str()),
            "node id '{id}' is the name of another party of the federation"
        );
        Ok(Role::Node(id.to_string()))
    }

    /// The common name, and the stem of the party's file names.
    pub fn name(&self) -> &str {
        match self {
            Role::Coordinator => "coordinator",
            Role::Helper => "helper",
            Role::Node(id) => id,
        }
    }

    /// The DNS name peers check: `coordinator.stroom`, `helper.stroom`, `<id>.node.stroom`.
    pub fn dns_name(&self) -> String {
        match self {
            Role::Coordinator => "coordinator.stroom".into(),
            Role::Helper => "helper.stroom".into(),
            Role::Node(id) => node_dns_name(id),
        }
    }

    /// Only the coordinator connects to others (nodes and the helper), so only its certificate
    /// may act as a TLS client: a node presenting its own certificate is refused at the handshake.
    fn is_client(&self) -> bool {
        match self {
            Role::Coordinator => true,
            Role::Helper | Role::Node(_) => false,
        }
    }
}

pub fn node_dns_name(node_id: &str) -> String {
    format!("{}.node.stroom", node_id.to_ascii_lowercase())
}

/// Leaf certificates run two years (rotate yearly: docs/OPERATIONS.md); the CA ten.
const LEAF_DAYS: u64 = 730;
const CA_DAYS: u64 = 3650;

/// Valid from yesterday (clock skew) for `days` days.
fn set_validity(p: &mut CertificateParams, days: u64) {
    use chrono::Datelike;
    let day = |d: chrono::NaiveDate| rcgen::date_time_ymd(d.year(), d.month() as u8, d.day() as u8);
    let today = chrono::Utc::now().date_naive();
    p.not_before = day(today - chrono::Days::new(1));
    p.not_after = day(today + chrono::Days::new(days));
}

/// 16 random bytes, positive as a DER integer (top bit clear) and never zero (RFC 5280 §4.1.2.2:
/// a positive integer of at most 20 octets; CA/Browser rules: at least 64 random bits).
fn random_serial() -> SerialNumber {
    use rand::RngCore;
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

fn subject(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "Stroom federation");
    dn
}

/// The federation CA: may sign certificates and revocation lists, nothing else.
pub fn ca() -> Result<CertificateParams> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.distinguished_name = subject("Stroom federation CA");
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.serial_number = Some(random_serial());
    p.use_authority_key_identifier_extension = true;
    set_validity(&mut p, CA_DAYS);
    Ok(p)
}

/// What the party asks for in its request. Informational: the CA builds the certificate from
/// [`leaf`], so a request cannot widen its own names or usages.
pub fn request(role: &Role) -> Result<CertificateParams> {
    let mut p = CertificateParams::new(vec![role.dns_name()])?;
    p.distinguished_name = subject(role.name());
    Ok(p)
}

/// A party's certificate: its role's DNS name, `localhost` and 127.0.0.1 (local and test
/// deployments), and the operator's `extra_dns` (the host names clients really use).
pub fn leaf(role: &Role, extra_dns: &[String]) -> Result<CertificateParams> {
    let mut names = vec![role.dns_name(), "localhost".to_string()];
    for name in extra_dns {
        if !names.contains(name) {
            names.push(name.clone());
        }
    }
    let mut p = CertificateParams::new(names)?;
    p.subject_alt_names
        .push(SanType::IpAddress(std::net::IpAddr::V4(
            std::net::Ipv4Addr::LOCALHOST,
        )));
    p.distinguished_name = subject(role.name());
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    if role.is_client() {
        p.extended_key_usages
            .push(ExtendedKeyUsagePurpose::ClientAuth);
    }
    p.serial_number = Some(random_serial());
    p.use_authority_key_identifier_extension = true;
    set_validity(&mut p, LEAF_DAYS);
    Ok(p)
}
