//! `stroom certs`: a federation CA and certificates for the coordinator and every node. A node's
//! certificate names its provider id (common name and a `<id>.node.stroom` DNS name) so the
//! coordinator can check it is talking to the provider it meant.

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use std::path::Path;

/// What to do with certificate and key files already in the output folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    /// Refuse before writing anything: replacing a federation's CA key silently would cut every
    /// node off from the coordinator.
    Refuse,
    /// Replace them (the demo's own scratch folder).
    Replace,
}

/// Writes a new file. A private key is created readable by its owner only, so its contents never
/// sit in a file others can read, not even between writing and restricting it.
fn write(path: &Path, text: &str, private: bool) -> Result<()> {
    use std::io::Write;
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("replacing {}", path.display()));
        }
        _ => {}
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(if private { 0o600 } else { 0o644 });
    }
    let _ = private;
    let mut file = opts
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

/// Leaf certificates run two years (rotate yearly: docs/OPERATIONS.md); the CA ten.
const LEAF_DAYS: i64 = 730;
const CA_DAYS: i64 = 3650;

/// Valid from yesterday (clock skew) for `days` days.
fn set_validity(p: &mut CertificateParams, days: i64) {
    use chrono::Datelike;
    let day = |d: chrono::NaiveDate| rcgen::date_time_ymd(d.year(), d.month() as u8, d.day() as u8);
    let today = chrono::Utc::now().date_naive();
    p.not_before = day(today - chrono::Days::new(1));
    p.not_after = day(today + chrono::Days::new(days as u64));
}

/// A leaf certificate. Only the coordinator's may act as a TLS client (`clientAuth`): a node
/// presenting its own certificate to another node is refused at the handshake.
fn leaf(common_name: &str, extra_dns: Option<String>, client: bool) -> Result<CertificateParams> {
    let mut names = vec!["localhost".to_string()];
    names.extend(extra_dns);
    let mut p = CertificateParams::new(names)?;
    p.subject_alt_names
        .push(SanType::IpAddress(std::net::IpAddr::V4(
            std::net::Ipv4Addr::LOCALHOST,
        )));
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "Stroom federation");
    p.distinguished_name = dn;
    set_validity(&mut p, LEAF_DAYS);
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    if client {
        p.extended_key_usages
            .push(ExtendedKeyUsagePurpose::ClientAuth);
    }
    Ok(p)
}

pub fn node_dns_name(node_id: &str) -> String {
    format!("{}.node.stroom", node_id.to_ascii_lowercase())
}

/// The secure-aggregation files `generate` writes with `helper`, besides `helper.crt/.key`.
pub const HELPER_HPKE_KEY: &str = "helper.hpke.key";
pub const HELPER_HPKE_PUB: &str = "helper.hpke.pub";
pub const VERIFY_KEY: &str = "aggregators.verify.key";
/// The helper's roster of node signing keys (`[[nodes]]` entries), for its `roster` setting.
pub const HELPER_ROSTER: &str = "helper-roster.toml";

pub fn node_signing_key(node: &str) -> String {
    format!("{node}.sign.key")
}

pub fn node_signing_pub(node: &str) -> String {
    format!("{node}.sign.pub")
}

/// Write `ca.crt`, `ca.key`, `coordinator.crt/.key` and `<NODE>.crt/.key` for each node into `out`;
/// with `helper` also the helper's certificate and HPKE key pair, the verification key the
/// coordinator and the helper share, and each node's report-signing key pair. Bad node ids and
/// (with `Existing::Refuse`) files already there are refused before anything is written.
pub fn generate(out: &Path, nodes: &[String], helper: bool, existing: Existing) -> Result<()> {
    for n in nodes {
        anyhow::ensure!(
            !n.is_empty()
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
            "node id '{n}' must be letters, digits, '-' or '_'"
        );
    }
    if existing == Existing::Refuse {
        let names = ["ca", "coordinator"]
            .into_iter()
            .chain(helper.then_some("helper"))
            .chain(nodes.iter().map(String::as_str));
        let mut files: Vec<String> = names
            .flat_map(|n| [format!("{n}.crt"), format!("{n}.key")])
            .collect();
        if helper {
            files.extend(
                [HELPER_HPKE_KEY, HELPER_HPKE_PUB, VERIFY_KEY, HELPER_ROSTER].map(String::from),
            );
            for n in nodes {
                files.extend([node_signing_key(n), node_signing_pub(n)]);
            }
        }
        let present: Vec<String> = files.into_iter().filter(|f| out.join(f).exists()).collect();
        anyhow::ensure!(
            present.is_empty(),
            "{} already holds {}; stroom certs never replaces certificates or keys (a new CA key \
             would cut every node off). Choose an empty folder, or move these away first",
            out.display(),
            present.join(", ")
        );
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "Stroom federation CA");
    ca.distinguished_name = dn;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    set_validity(&mut ca, CA_DAYS);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key)?;
    write(&out.join("ca.crt"), &ca_cert.pem(), false)?;
    write(&out.join("ca.key"), &ca_key.serialize_pem(), true)?;
    let issuer = Issuer::new(ca, ca_key);

    let issue = |name: &str, params: CertificateParams| -> Result<()> {
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &issuer)?;
        write(&out.join(format!("{name}.crt")), &cert.pem(), false)?;
        write(&out.join(format!("{name}.key")), &key.serialize_pem(), true)?;
        Ok(())
    };
    issue(
        "coordinator",
        leaf("coordinator", Some("coordinator.stroom".into()), true)?,
    )?;
    for n in nodes {
        issue(n, leaf(n, Some(node_dns_name(n)), false)?)?;
    }
    if helper {
        // Server-only, like a node's: the helper never connects to anyone.
        issue(
            "helper",
            leaf("helper", Some("helper.stroom".into()), false)?,
        )?;
        let (private, public) = secagg::seal::HelperPrivateKey::generate();
        write(&out.join(HELPER_HPKE_KEY), &private, true)?;
        write(&out.join(HELPER_HPKE_PUB), &public, false)?;
        let verify = secagg::vdaf::random_bytes::<{ secagg::vdaf::VERIFY_KEY_LEN }>()
            .map_err(|e| anyhow::anyhow!("verification key: {e}"))?;
        write(&out.join(VERIFY_KEY), &hex::encode(verify), true)?;
        let mut roster = String::from(
            "# The nodes whose signed reports the helper accepts (its `roster` setting).\n",
        );
        for n in nodes {
            let (key, text) = policies::governance::SigningKey::generate()?;
            write(&out.join(node_signing_key(n)), &text, true)?;
            write(&out.join(node_signing_pub(n)), &key.public_key_hex(), false)?;
            roster.push_str(&format!(
                "\n[[nodes]]\nid = \"{n}\"\npublic_key = \"{}\"\n",
                key.public_key_hex()
            ));
        }
        write(&out.join(HELPER_ROSTER), &roster, false)?;
    }
    Ok(())
}
