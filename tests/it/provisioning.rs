//! Keys made by their owners: the CA, the coordinator, the helper and each node provision
//! themselves in separate folders with `stroom certs ca|request|sign|verify-key|open-verify-key`,
//! exchanging only public files; a secure run then works, no folder holds another party's private
//! key, every certificate passes strict RFC 5280 validation, and strict clients connect.

use crate::secure_aggregation::{helper_config, secure_federation};
use crate::support::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "stroom {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn refused(args: &[&str]) -> String {
    let out = run(args);
    assert!(!out.status.success(), "stroom {} succeeded", args.join(" "));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf8 path")
}

/// Sends a public file from one party's folder to another's.
fn hand_over(from: &Path, to_dir: &Path) {
    std::fs::copy(from, to_dir.join(from.file_name().expect("name"))).expect("hand over");
}

/// Each party in its own folder under `certs`, with the separate commands.
fn provision_apart(certs: &Path, nodes: &[&str]) {
    let ca = certs.join("ca");
    ok(&["certs", "ca", "--out", s(&ca)]);
    let mut parties: Vec<(String, Vec<&str>)> = vec![
        ("coordinator".into(), vec!["--role", "coordinator"]),
        ("helper".into(), vec!["--role", "helper"]),
    ];
    for n in nodes {
        parties.push((n.to_string(), vec!["--role", "node", "--id", n]));
    }
    for (name, role) in &parties {
        let dir = certs.join(name);
        let mut args = vec!["certs", "request", "--out", s(&dir)];
        args.extend(role);
        let said = ok(&args);
        if name == "helper" {
            assert!(said.contains("fingerprint sha256:"), "{said}");
        }
        // The CA receives the request only, and sends back the certificate and ca.crt.
        let csr = dir.join(format!("{name}.csr"));
        let mut args = vec!["certs", "sign", "--ca", s(&ca), "--csr", s(&csr)];
        args.extend(role);
        args.extend(["--out", s(&dir)]);
        ok(&args);
    }
    let (coordinator, helper) = (certs.join("coordinator"), certs.join("helper"));
    let helper_pub = helper.join("helper.hpke.pub");
    // The fingerprint a node's operator computes matches the one the helper published.
    let published = ok(&["certs", "fingerprint", s(&helper_pub)]);
    for n in nodes {
        hand_over(&helper_pub, &certs.join(n));
        let theirs = ok(&[
            "certs",
            "fingerprint",
            s(&certs.join(n).join("helper.hpke.pub")),
        ]);
        assert_eq!(published, theirs);
    }
    ok(&[
        "certs",
        "verify-key",
        "--helper-key",
        s(&helper_pub),
        "--out",
        s(&coordinator),
    ]);
    let sealed = coordinator.join("aggregators.verify.sealed");
    // Sealed to the helper: another helper key does not open it.
    let stranger = certs.join("stranger");
    ok(&[
        "certs",
        "request",
        "--role",
        "helper",
        "--out",
        s(&stranger),
    ]);
    let err = refused(&[
        "certs",
        "open-verify-key",
        "--sealed",
        s(&sealed),
        "--hpke-key",
        s(&stranger.join("helper.hpke.key")),
        "--out",
        s(&stranger),
    ]);
    assert!(err.contains("sealed to another helper key"), "{err}");
    std::fs::remove_dir_all(&stranger).expect("remove");
    hand_over(&sealed, &helper);
    ok(&[
        "certs",
        "open-verify-key",
        "--sealed",
        s(&helper.join("aggregators.verify.sealed")),
        "--hpke-key",
        s(&helper.join("helper.hpke.key")),
        "--out",
        s(&helper),
    ]);
}

/// Every private file (owner-only) in each party folder, by folder.
fn private_files(certs: &Path) -> BTreeMap<String, Vec<(PathBuf, Vec<u8>)>> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = BTreeMap::new();
    for party in std::fs::read_dir(certs).expect("certs") {
        let party = party.expect("entry").path();
        let mut secrets = Vec::new();
        for f in std::fs::read_dir(&party).expect("party") {
            let f = f.expect("entry").path();
            let mode = std::fs::metadata(&f).expect("meta").permissions().mode();
            let name = f.file_name().expect("name").to_string_lossy().into_owned();
            if name.ends_with(".key") {
                assert_eq!(mode & 0o077, 0, "{} has mode {:o}", f.display(), mode);
                secrets.push((f.clone(), std::fs::read(&f).expect("read")));
            } else {
                assert_eq!(mode & 0o077, 0o044, "{} is public", f.display());
            }
        }
        let name = party
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        out.insert(name, secrets);
    }
    out
}

/// No folder holds another party's private key. The one secret two parties hold by design is
/// the aggregators' verification key: the coordinator's and the helper's own copies.
fn assert_each_party_holds_only_its_own_keys(certs: &Path) {
    let secrets = private_files(certs);
    assert!(secrets.contains_key("ca") && secrets.contains_key("coordinator"));
    for (owner, files) in &secrets {
        for (path, bytes) in files {
            let shared = path.ends_with("aggregators.verify.key");
            for other in std::fs::read_dir(certs).expect("certs") {
                let other = other.expect("entry").path();
                let other_name = other
                    .file_name()
                    .expect("name")
                    .to_string_lossy()
                    .into_owned();
                if &other_name == owner
                    || (shared && ["coordinator", "helper"].contains(&other_name.as_str()))
                {
                    continue;
                }
                // The middle of the key's text: its own bytes, not a shared PEM header.
                let secret = String::from_utf8_lossy(bytes).trim().to_string();
                let mid = secret.len() / 2;
                let needle = &secret.as_bytes()[mid - 16..mid + 16];
                for f in std::fs::read_dir(&other).expect("party") {
                    let f = f.expect("entry").path();
                    let text = std::fs::read(&f).expect("read");
                    assert!(
                        !text.windows(needle.len()).any(|w| w == needle),
                        "{} holds {}'s private key {}",
                        f.display(),
                        owner,
                        path.display()
                    );
                }
            }
        }
    }
}

/// `openssl verify -x509_strict` for every certificate, with the purpose each role needs.
fn assert_strict_x509(certs: &Path) {
    let ca = certs.join("ca").join("ca.crt");
    let mut checked = 0;
    for party in std::fs::read_dir(certs).expect("certs") {
        let party = party.expect("entry").path();
        for f in std::fs::read_dir(&party).expect("party") {
            let f = f.expect("entry").path();
            if f.extension().is_none_or(|e| e != "crt") {
                continue;
            }
            let name = f.file_stem().expect("stem").to_string_lossy().into_owned();
            let mut purposes = vec!["sslserver"];
            if name == "coordinator" {
                purposes.push("sslclient");
            }
            if name == "ca" {
                purposes = vec!["any"];
            }
            for purpose in purposes {
                let out = Command::new("openssl")
                    .args(["verify", "-x509_strict", "-purpose", purpose, "-CAfile"])
                    .arg(&ca)
                    .arg(&f)
                    .output()
                    .expect("openssl");
                assert!(
                    out.status.success(),
                    "openssl verify -x509_strict -purpose {purpose} {}: {}{}",
                    f.display(),
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            let text = Command::new("openssl")
                .args(["x509", "-noout", "-text", "-serial", "-in"])
                .arg(&f)
                .output()
                .expect("openssl x509");
            let text = String::from_utf8_lossy(&text.stdout);
            assert!(text.contains("Authority Key Identifier"), "{text}");
            assert!(text.contains("Subject Key Identifier"), "{text}");
            let serial = text
                .lines()
                .find_map(|l| l.strip_prefix("serial="))
                .expect("serial");
            assert!(
                u8::from_str_radix(&serial[..2], 16).expect("hex") < 0x80 && serial.len() >= 16,
                "serial {serial} must be positive and random"
            );
            checked += 1;
        }
    }
    assert!(checked >= 4, "only {checked} certificates checked");
}

/// Python's `ssl` with `VERIFY_X509_STRICT` (the default of Python 3.13's context) calls `url`,
/// optionally presenting a client certificate; returns the HTTP status.
fn python_strict_get(ca: &Path, url: &str, identity: Option<(&Path, &Path)>) -> String {
    let script = r#"
import ssl, sys, urllib.request
ctx = ssl.create_default_context(cafile=sys.argv[1])
ctx.verify_flags |= ssl.VERIFY_X509_STRICT
if len(sys.argv) > 3:
    ctx.load_cert_chain(sys.argv[3], sys.argv[4])
with urllib.request.urlopen(sys.argv[2], context=ctx, timeout=30) as r:
    print(r.status)
"#;
    let mut cmd = Command::new("python3");
    cmd.args(["-c", script]).arg(ca).arg(url);
    if let Some((cert, key)) = identity {
        cmd.arg(cert).arg(key);
    }
    let out = cmd.output().expect("python3");
    assert!(
        out.status.success(),
        "python strict client to {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test]
async fn parties_provisioned_apart_run_securely_with_strict_certificates() {
    let ids = ["P01", "P02", "P03"];
    let fed = synth_fixture(ids.len());
    let dir = fed.path();
    let certs = dir.join("certs");
    provision_apart(&certs, &ids);
    assert_each_party_holds_only_its_own_keys(&certs);
    assert_strict_x509(&certs);

    // Each server reads its own folder only (see the configs), and a secure run succeeds.
    let helper = ServerProcess::start_helper(&helper_config(dir, &ids));
    let (nodes, coordinator) = secure_federation(dir, &ids, &helper.url);
    let run = run_to_completion(&client(dir), &coordinator.url, "care.youth_days", "2024Q2").await;
    assert_eq!(run["status"], "done", "{run}");
    assert!(
        run["results"].as_array().is_some_and(|r| !r.is_empty()),
        "{run}"
    );

    // Strict clients: a researcher's Python against the coordinator, and the coordinator's
    // identity against a node (mutual TLS).
    let ca = certs.join("ca/ca.crt");
    let url = coordinator.url.replace("127.0.0.1", "localhost");
    assert_eq!(
        python_strict_get(&ca, &format!("{url}/healthz"), None),
        "200"
    );
    let (cert, key) = (
        certs.join("coordinator/coordinator.crt"),
        certs.join("coordinator/coordinator.key"),
    );
    let node_url = nodes[0].url.replace("127.0.0.1", "localhost");
    assert_eq!(
        python_strict_get(&ca, &format!("{node_url}/healthz"), Some((&cert, &key))),
        "200"
    );
}

#[test]
fn the_one_go_folders_keep_each_partys_keys_apart_and_pass_strict_validation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = dir.path().join("certs");
    ok(&[
        "certs",
        "--out",
        s(&certs),
        "--nodes",
        "P01,P02",
        "--helper",
    ]);
    assert_each_party_holds_only_its_own_keys(&certs);
    assert_strict_x509(&certs);
    for party in ["ca", "coordinator", "helper", "P01", "P02"] {
        assert!(certs.join(party).is_dir(), "{party}/");
    }
    assert!(
        !certs.join("ca.key").exists(),
        "no key outside a party folder"
    );
}

#[test]
fn the_ca_signs_only_a_valid_request_for_the_role_it_names() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca, p01) = (dir.path().join("ca"), dir.path().join("P01"));
    ok(&["certs", "ca", "--out", s(&ca)]);
    ok(&[
        "certs",
        "request",
        "--role",
        "node",
        "--id",
        "P01",
        "--out",
        s(&p01),
    ]);
    let csr = p01.join("P01.csr");
    // A node's request signed as the coordinator's (which may act as a client): refused.
    let err = refused(&[
        "certs",
        "sign",
        "--ca",
        s(&ca),
        "--csr",
        s(&csr),
        "--role",
        "coordinator",
        "--out",
        s(&p01),
    ]);
    assert!(err.contains("the request is for 'P01'"), "{err}");
    let err = refused(&[
        "certs",
        "sign",
        "--ca",
        s(&ca),
        "--csr",
        s(&csr),
        "--role",
        "node",
        "--id",
        "P02",
        "--out",
        s(&p01),
    ]);
    assert!(err.contains("not for node 'P02'"), "{err}");
    // A request altered after it was signed by its key: refused.
    let pem = std::fs::read_to_string(&csr).expect("csr");
    let mut lines: Vec<String> = pem.lines().map(String::from).collect();
    let mid = lines.len() / 2;
    let flipped: String = lines[mid]
        .chars()
        .map(|c| {
            if c == 'A' {
                'B'
            } else if c == 'B' {
                'A'
            } else {
                c
            }
        })
        .collect();
    lines[mid] = flipped;
    let bent = dir.path().join("bent.csr");
    std::fs::write(&bent, lines.join("\n") + "\n").expect("write");
    let err = refused(&[
        "certs",
        "sign",
        "--ca",
        s(&ca),
        "--csr",
        s(&bent),
        "--role",
        "node",
        "--id",
        "P01",
        "--out",
        s(&p01),
    ]);
    assert!(
        err.contains("not a valid certificate signing request"),
        "{err}"
    );
    assert!(
        !p01.join("P01.crt").exists(),
        "a refused signing writes nothing"
    );
    // A request made by the party's own key is signed; a second signing never replaces it.
    ok(&[
        "certs",
        "sign",
        "--ca",
        s(&ca),
        "--csr",
        s(&csr),
        "--role",
        "node",
        "--id",
        "P01",
        "--dns",
        "p01.example.org",
        "--out",
        s(&p01),
    ]);
    let text = Command::new("openssl")
        .args([
            "x509",
            "-noout",
            "-ext",
            "subjectAltName,extendedKeyUsage",
            "-in",
        ])
        .arg(p01.join("P01.crt"))
        .output()
        .expect("openssl");
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("DNS:p01.node.stroom"), "{text}");
    assert!(text.contains("DNS:p01.example.org"), "{text}");
    assert!(!text.contains("Client Authentication"), "{text}");
    let err = refused(&[
        "certs",
        "sign",
        "--ca",
        s(&ca),
        "--csr",
        s(&csr),
        "--role",
        "node",
        "--id",
        "P01",
        "--out",
        s(&p01),
    ]);
    assert!(err.contains("already holds P01.crt"), "{err}");
    // A node id that would name another party's folder.
    let err = refused(&[
        "certs",
        "request",
        "--role",
        "node",
        "--id",
        "helper",
        "--out",
        s(&p01),
    ]);
    assert!(err.contains("name of another party"), "{err}");
}
