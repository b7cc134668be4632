//! The `stroom certs` command line: one subcommand per step of the per-party flow, and the flat
//! form (`--out DIR --nodes …`) that runs them all for a demo or a test.

use super::{Existing, Role};
use anyhow::Result;
use clap::{Args, Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct CertsArgs {
    #[command(subcommand)]
    step: Option<Step>,
    /// All parties at once, one folder each under DIR (for a demo or a test on one machine).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Comma-separated provider ids, e.g. P01,P02,P03.
    #[arg(long, value_delimiter = ',')]
    nodes: Vec<String>,
    /// Also the helper: its certificate and HPKE key pair, the verification key coordinator and
    /// helper share (sealed from one to the other), and the helper's roster of node keys.
    #[arg(long)]
    helper: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum RoleArg {
    Coordinator,
    Helper,
    Node,
}

#[derive(Args)]
struct RoleArgs {
    /// Which party.
    #[arg(long, value_enum)]
    role: RoleArg,
    /// The node's provider id (with `--role node`).
    #[arg(long)]
    id: Option<String>,
}

impl RoleArgs {
    fn role(&self) -> Result<Role> {
        match (self.role, &self.id) {
            (RoleArg::Node, Some(id)) => Role::node(id),
            (RoleArg::Node, None) => anyhow::bail!("--role node needs --id, the provider id"),
            (RoleArg::Coordinator, None) => Ok(Role::Coordinator),
            (RoleArg::Helper, None) => Ok(Role::Helper),
            (RoleArg::Coordinator | RoleArg::Helper, Some(_)) => {
                anyhow::bail!("--id names a node; the coordinator and the helper have none")
            }
        }
    }
}

#[derive(Subcommand)]
enum Step {
    /// The CA holder: a new federation CA (`ca.crt` for everyone, `ca.key` for no one else).
    Ca {
        #[arg(long)]
        out: PathBuf,
    },
    /// A party, on its own machine: its private keys and a certificate signing request. Send the
    /// `.csr` to the CA; a node sends its `.roster.toml` to the helper; the helper publishes its
    /// `helper.hpke.pub` with the fingerprint printed here.
    Request {
        #[command(flatten)]
        role: RoleArgs,
        #[arg(long)]
        out: PathBuf,
    },
    /// The CA holder: sign a party's request for its role; writes `<name>.crt` and `ca.crt`.
    Sign {
        /// The CA's folder (`ca.crt`, `ca.key`).
        #[arg(long)]
        ca: PathBuf,
        #[arg(long)]
        csr: PathBuf,
        #[command(flatten)]
        role: RoleArgs,
        /// Further DNS names clients use for this party (comma-separated).
        #[arg(long, value_delimiter = ',')]
        dns: Vec<String>,
        #[arg(long)]
        out: PathBuf,
    },
    /// The coordinator: the verification key it shares with the helper, kept in
    /// `aggregators.verify.key` and sealed to the helper's public key in
    /// `aggregators.verify.sealed` (send that file to the helper).
    VerifyKey {
        /// The helper's `helper.hpke.pub` (compare its fingerprint with the helper's operator).
        #[arg(long)]
        helper_key: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// The helper: open the coordinator's sealed verification key with its own HPKE key.
    OpenVerifyKey {
        #[arg(long)]
        sealed: PathBuf,
        #[arg(long)]
        hpke_key: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// Print the fingerprint of a helper HPKE public key, to compare out of band.
    Fingerprint { helper_key: PathBuf },
}

pub fn run(args: CertsArgs) -> Result<std::process::ExitCode> {
    let refuse = Existing::Refuse;
    match args.step {
        None => {
            let Some(out) = args.out else {
                anyhow::bail!(
                    "stroom certs needs a step (ca, request, sign, verify-key, open-verify-key) or --out DIR --nodes … for all parties at once"
                );
            };
            anyhow::ensure!(!args.nodes.is_empty(), "--nodes: at least one provider id");
            super::federation(&out, &args.nodes, args.helper, refuse)?;
            println!(
                "wrote one folder per party under {}: ca/ (the CA's key: keep it offline), coordinator/, {}{}; each holds its own private keys only",
                out.display(),
                args.nodes.join("/, ") + "/",
                if args.helper { ", helper/" } else { "" }
            );
        }
        Some(Step::Ca { out }) => {
            super::make_ca(&out, refuse)?;
            println!(
                "wrote {0}/ca.crt (give it to every party) and {0}/ca.key (never leaves this machine)",
                out.display()
            );
        }
        Some(Step::Request { role, out }) => {
            let role = role.role()?;
            let done = super::request(&role, &out, refuse)?;
            println!("wrote {} to {}", done.files.join(", "), out.display());
            println!(
                "send {} to the federation CA; keep the .key files on this machine",
                super::csr_file(&role)
            );
            if let Role::Node(id) = &role {
                println!(
                    "send {} to the helper's operator (it lists your report-signing key)",
                    super::node_roster_entry(id)
                );
            }
            if let Some(fp) = done.hpke_fingerprint {
                println!(
                    "publish {} with its fingerprint {fp}; node operators and the coordinator compare it out of band",
                    super::HELPER_HPKE_PUB
                );
            }
        }
        Some(Step::Sign {
            ca,
            csr,
            role,
            dns,
            out,
        }) => {
            let role = role.role()?;
            let path = super::sign(&ca, &csr, &role, &dns, &out, refuse)?;
            println!(
                "wrote {} for {} ({}); send it and ca.crt back",
                path.display(),
                role.name(),
                role.dns_name()
            );
        }
        Some(Step::VerifyKey { helper_key, out }) => {
            super::make_verify_key(&helper_key, &out, refuse)?;
            println!(
                "wrote {0}/{1} (keep it) and {0}/{2} (send it to the helper: only its key opens it)",
                out.display(),
                super::VERIFY_KEY,
                super::VERIFY_KEY_SEALED
            );
        }
        Some(Step::OpenVerifyKey {
            sealed,
            hpke_key,
            out,
        }) => {
            super::open_verify_key(&sealed, &hpke_key, &out, refuse)?;
            println!("wrote {}/{}", out.display(), super::VERIFY_KEY);
        }
        Some(Step::Fingerprint { helper_key }) => {
            let key = secagg::seal::HelperPublicKey::from_hex(&super::files::read(&helper_key)?)?;
            println!("{}", key.fingerprint());
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}
