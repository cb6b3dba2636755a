//! `rsnet-certs`: the provider CA, issuing and revoking certificates.
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use rsnet_certs::Pki;
use rsnet_common::tls::Role;

#[derive(Parser)]
#[command(
    name = "rsnet-certs",
    version,
    about = "Provider CA for rsnet: init, issue, revoke"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create the provider CA and an empty CRL in DIR.
    Init {
        /// PKI directory.
        #[arg(long)]
        dir: PathBuf,
        /// Restrict proxy certificates to this customer.
        #[arg(long)]
        customer: Option<String>,
    },
    /// Create the release signing key pair in DIR (for a PKI made before
    /// `init` created one); refuses to replace an existing key.
    ReleaseKey {
        /// PKI directory.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Issue a certificate and key for a component.
    Issue {
        /// PKI directory.
        #[arg(long)]
        dir: PathBuf,
        /// Component ID (e.g. acme.p7).
        #[arg(long)]
        id: String,
        /// proxy, mlm, appserver or operator.
        #[arg(long)]
        role: String,
        /// DNS name or IP for server roles (repeatable; default localhost, 127.0.0.1, ::1).
        #[arg(long = "host")]
        hosts: Vec<String>,
        /// Subtree an MLM may relay for (default its customer), or an
        /// operator may see and act on (default all); repeatable.
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// An operator's permission: read, send, release or admin
        /// (repeatable; none: read only).
        #[arg(long = "perm")]
        perms: Vec<String>,
        /// A message class a proxy or MLM may send (repeatable; none: every
        /// class; heartbeats, reports, bulk requests and responses always may).
        #[arg(long = "class")]
        classes: Vec<String>,
    },
    /// Revoke every certificate of ID and rewrite DIR/crl.pem.
    Revoke {
        /// PKI directory.
        #[arg(long)]
        dir: PathBuf,
        /// Component ID.
        #[arg(long)]
        id: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Init { dir, customer } => Pki::init(&dir, customer.as_deref()).map(|p| {
            println!("CA created: {}", p.ca().display());
            println!("CRL:        {}", p.crl().display());
            println!("release key: {} (0600; the appserver's only)", p.release_key().display());
            println!("release pub: {} (give it to every proxy)", p.release_pub().display());
        }),
        Cmd::ReleaseKey { dir } => Pki::open(&dir)
            .and_then(|p| p.create_release_key().map(|_| p))
            .map(|p| {
                println!("release key: {} (0600; the appserver's only)", p.release_key().display());
                println!("release pub: {} (give it to every proxy)", p.release_pub().display());
            }),
        Cmd::Issue { dir, id, role, hosts, scopes, perms, classes } => match Role::parse(&role) {
            None => Err(rsnet_certs::PkiError::Usage(format!(
                "--role {role:?}: expected proxy, mlm, appserver or operator"
            ))),
            Some(role) => Pki::open(&dir).and_then(|p| p.issue_with(&id, role, &hosts, &scopes, &perms, &classes)).map(|f| {
                println!("certificate: {}", f.cert.display());
                println!("key:         {} (0600)", f.key.display());
            }),
        },
        Cmd::Revoke { dir, id } => Pki::open(&dir).and_then(|p| p.revoke(&id)).map(|n| {
            println!("revoked {n} certificate(s) of {id}; CRL rewritten (nodes reload it within seconds)");
        }),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rsnet-certs: {e}");
            ExitCode::FAILURE
        }
    }
}
