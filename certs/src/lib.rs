//! The provider PKI (DESIGN.md §9): a CA, certificates carrying component
//! identities, and a CRL.
//!
//! # Directory layout
//!
//! ```text
//! PKI/ca.pem ca.key          the CA (key 0600)
//! PKI/crl.pem                the CRL, rewritten by every revoke (nodes reload it)
//! PKI/index.json             every issued certificate: id, role, serial, revoked
//! PKI/issued/ID.pem ID.key   issued certificates and keys (keys 0600)
//! ```
//!
//! Identities are URI SANs (`urn:rsnet:id:…`, `urn:rsnet:role:…`,
//! `urn:rsnet:scope:…`), read back by `rsnet_common::tls::Identity`.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevokedCertParams, SanType, SerialNumber,
};
use rsnet_common::id::ComponentId;
use rsnet_common::release::ReleaseKey;
use rsnet_common::tls::{Role, SAN_ID, SAN_ROLE, SAN_SCOPE};
use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

/// How long issued certificates are valid.
pub const CERT_VALIDITY: Duration = Duration::days(365);
/// How long the CA is valid.
pub const CA_VALIDITY: Duration = Duration::days(3650);
/// A CRL's next-update horizon; nodes keep using it past that (we do not enforce expiry).
pub const CRL_VALIDITY: Duration = Duration::days(30);

/// Why a PKI operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// File system.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Certificate generation.
    #[error("certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// Bad arguments or state (existing CA, unknown ID, bad host name).
    #[error("{0}")]
    Usage(String),
}

type Result<T> = std::result::Result<T, PkiError>;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes a file; private ones are created 0600 before any byte is written.
fn write(path: &Path, data: &str, private: bool) -> Result<()> {
    let mut o = fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    let tmp = path.with_extension("tmp");
    let mut f = o.open(&tmp).map_err(io(&tmp))?;
    f.write_all(data.as_bytes()).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    fs::rename(&tmp, path).map_err(io(path))
}

/// One issued certificate in `index.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Issued {
    /// Component ID.
    pub id: String,
    /// Role.
    pub role: Role,
    /// Serial number (hex).
    pub serial: String,
    /// Revoked?
    pub revoked: bool,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Index {
    customer: Option<String>,
    issued: Vec<Issued>,
    crl_number: u64,
}

/// What a certificate says: who, in which role, and what it may do.
#[derive(Debug, Clone, Copy)]
pub struct Grant<'a> {
    /// Component ID.
    pub id: &'a str,
    /// Role.
    pub role: Role,
    /// DNS names or IPs (mlm, appserver; default localhost, 127.0.0.1, ::1).
    pub hosts: &'a [String],
    /// Subtrees an MLM relays for, or an operator sees.
    pub scopes: &'a [String],
    /// An operator's permissions.
    pub perms: &'a [String],
    /// Message classes a proxy or MLM may send (none: every class).
    pub classes: &'a [String],
    /// How long from now it is valid.
    pub valid_for: std::time::Duration,
}

/// A PKI directory.
#[derive(Debug, Clone)]
pub struct Pki {
    dir: PathBuf,
}

/// Paths of one issued certificate.
#[derive(Debug, Clone)]
pub struct IssuedFiles {
    /// Certificate PEM.
    pub cert: PathBuf,
    /// Key PEM (0600).
    pub key: PathBuf,
}

impl Pki {
    /// Opens an existing PKI directory.
    pub fn open(dir: &Path) -> Result<Pki> {
        if !dir.join("ca.pem").exists() {
            return Err(PkiError::Usage(format!(
                "{}: no CA here (run `rsnet-certs init` first)",
                dir.display()
            )));
        }
        Ok(Pki {
            dir: dir.to_path_buf(),
        })
    }

    /// Creates a CA and an empty CRL in `dir`.
    pub fn init(dir: &Path, customer: Option<&str>) -> Result<Pki> {
        if dir.join("ca.pem").exists() {
            return Err(PkiError::Usage(format!(
                "{}: a CA exists already; refusing to overwrite it",
                dir.display()
            )));
        }
        if let Some(c) = customer {
            c.parse::<ComponentId>()
                .map_err(|e| PkiError::Usage(format!("--customer: {e}")))?;
        }
        fs::create_dir_all(dir.join("issued")).map_err(io(dir))?;
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::default();
        p.distinguished_name
            .push(DnType::CommonName, "rsnet provider CA");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        p.not_before = OffsetDateTime::now_utc() - Duration::hours(1);
        p.not_after = OffsetDateTime::now_utc() + CA_VALIDITY;
        let cert = p.self_signed(&key)?;
        write(&dir.join("ca.key"), &key.serialize_pem(), true)?;
        write(&dir.join("ca.pem"), &cert.pem(), false)?;
        let pki = Pki {
            dir: dir.to_path_buf(),
        };
        pki.save_index(&Index {
            customer: customer.map(str::to_string),
            ..Default::default()
        })?;
        pki.write_crl()?;
        pki.create_release_key()?;
        Ok(pki)
    }

    /// The release signing key (`release.key`, 0600): held by the appserver only.
    pub fn release_key(&self) -> PathBuf {
        self.dir.join("release.key")
    }

    /// Its public half (`release.pub`): given to every proxy.
    pub fn release_pub(&self) -> PathBuf {
        self.dir.join("release.pub")
    }

    /// Creates the release key pair (separate from the CA: it signs release
    /// manifests, never certificates). Refuses to replace one: proxies trust
    /// the public half they were given.
    ///
    /// # Errors
    /// A key exists already; file or random-source failures.
    pub fn create_release_key(&self) -> Result<()> {
        if self.release_key().exists() {
            return Err(PkiError::Usage(format!(
                "{}: a release key exists already; refusing to replace it",
                self.release_key().display()
            )));
        }
        let text = ReleaseKey::generate().map_err(|e| PkiError::Usage(e.to_string()))?;
        let key = ReleaseKey::from_text(&text).map_err(|e| PkiError::Usage(e.to_string()))?;
        write(&self.release_pub(), &key.public().to_text(), false)?;
        write(&self.release_key(), &text, true)
    }

    /// The CA certificate path.
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// The CRL path.
    pub fn crl(&self) -> PathBuf {
        self.dir.join("crl.pem")
    }

    fn index(&self) -> Result<Index> {
        let p = self.dir.join("index.json");
        let s = fs::read_to_string(&p).map_err(io(&p))?;
        serde_json::from_str(&s).map_err(|e| PkiError::Usage(format!("{}: {e}", p.display())))
    }

    fn save_index(&self, i: &Index) -> Result<()> {
        let s = serde_json::to_string_pretty(i).map_err(|e| PkiError::Usage(e.to_string()))?;
        write(&self.dir.join("index.json"), &s, false)
    }

    fn issuer(&self) -> Result<Issuer<'static, KeyPair>> {
        let kp = self.dir.join("ca.key");
        let key = KeyPair::from_pem(&fs::read_to_string(&kp).map_err(io(&kp))?)?;
        let cp = self.ca();
        Ok(Issuer::from_ca_cert_pem(
            &fs::read_to_string(&cp).map_err(io(&cp))?,
            key,
        )?)
    }

    /// Issues a certificate for `id` with `role`. Server roles (mlm,
    /// appserver) get `hosts` as DNS/IP names, defaulting to localhost,
    /// 127.0.0.1 and ::1. MLMs get `scopes` (default: their customer).
    pub fn issue(
        &self,
        id: &str,
        role: Role,
        hosts: &[String],
        scopes: &[String],
    ) -> Result<IssuedFiles> {
        self.issue_with(id, role, hosts, scopes, &[], &[])
    }

    /// [`Pki::issue`] with an operator's permissions (`read`, `send`,
    /// `release`, `admin`; none: read only) and the message classes a
    /// proxy or MLM may send (none: every class).
    ///
    /// # Errors
    /// As [`Pki::issue`]; a permission that is unknown or not for an
    /// operator; a class that is not a class label.
    pub fn issue_with(
        &self,
        id: &str,
        role: Role,
        hosts: &[String],
        scopes: &[String],
        perms: &[String],
        classes: &[String],
    ) -> Result<IssuedFiles> {
        let key = KeyPair::generate()?;
        let grant = Grant {
            id,
            role,
            hosts,
            scopes,
            perms,
            classes,
            valid_for: std::time::Duration::from_secs(CERT_VALIDITY.whole_seconds().unsigned_abs()),
        };
        let (cert, _) = self.sign(&grant, |p, issuer| Ok(p.signed_by(&key, issuer)?))?;
        let files = IssuedFiles {
            cert: self.dir.join("issued").join(format!("{id}.pem")),
            key: self.dir.join("issued").join(format!("{id}.key")),
        };
        write(&files.key, &key.serialize_pem(), true)?;
        write(&files.cert, &cert, false)?;
        Ok(files)
    }

    /// Issues a certificate for the public key of `csr_pem` (a PKCS#10
    /// request whose signature is checked; its subject and extensions are
    /// ignored: everything the certificate says comes from `grant`).
    /// Returns the certificate PEM and its serial (hex). The key never
    /// reaches this host: this is how enrollment and renewal issue.
    ///
    /// # Errors
    /// As [`Pki::issue_with`]; a CSR that does not parse or whose
    /// signature is wrong.
    pub fn issue_csr(&self, grant: &Grant<'_>, csr_pem: &str) -> Result<(String, String)> {
        let csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| PkiError::Usage(format!("certificate request: {e}")))?;
        self.sign(grant, |p, issuer| {
            let req = rcgen::CertificateSigningRequestParams {
                params: p,
                public_key: csr.public_key.clone(),
            };
            Ok(req.signed_by(issuer)?)
        })
    }

    /// Checks `grant`, builds its certificate parameters, has `signer`
    /// sign them, and records the serial in the index (under the lock).
    fn sign(
        &self,
        grant: &Grant<'_>,
        signer: impl FnOnce(CertificateParams, &Issuer<'static, KeyPair>) -> Result<rcgen::Certificate>,
    ) -> Result<(String, String)> {
        let Grant {
            id,
            role,
            hosts,
            scopes,
            perms,
            classes,
            valid_for,
        } = *grant;
        for c in classes {
            if !rsnet_common::model::valid_class(c) {
                return Err(PkiError::Usage(format!(
                    "--class {c:?} is not a class label"
                )));
            }
        }
        if !classes.is_empty() && !matches!(role, Role::Proxy | Role::Mlm) {
            return Err(PkiError::Usage(
                "--class is for proxy and mlm certificates".into(),
            ));
        }
        if !perms.is_empty() && role != Role::Operator {
            return Err(PkiError::Usage(
                "--perm is for operator certificates".into(),
            ));
        }
        for p in perms {
            if rsnet_common::tls::Perm::parse(p).is_none() {
                return Err(PkiError::Usage(format!(
                    "--perm {p:?}: expected read, send, release or admin"
                )));
            }
        }
        let cid: ComponentId = id
            .parse()
            .map_err(|e| PkiError::Usage(format!("--id: {e}")))?;
        let _lock = self.lock()?;
        let mut index = self.index()?;
        if let Some(c) = &index.customer {
            if role == Role::Proxy && cid.customer() != c {
                return Err(PkiError::Usage(format!(
                    "--id {id} is not under customer {c}"
                )));
            }
        }
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::CommonName, id);
        let serial: [u8; 16] = *rsnet_common::MessageId::new().as_bytes();
        p.serial_number = Some(SerialNumber::from_slice(&serial[..]));
        // Backdated a little for clocks that lag the CA's.
        p.not_before = OffsetDateTime::now_utc() - Duration::minutes(5);
        p.not_after = OffsetDateTime::now_utc()
            + Duration::seconds(i64::try_from(valid_for.as_secs()).unwrap_or(i64::MAX / 2));
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let uri = |s: String| {
            SanType::URI(
                s.try_into()
                    .unwrap_or_else(|_| "urn:invalid".try_into().expect("ascii")),
            )
        };
        p.subject_alt_names = vec![
            uri(format!("{SAN_ID}{id}")),
            uri(format!("{SAN_ROLE}{}", role.as_str())),
        ];
        for s in scopes {
            let scope: ComponentId = s
                .parse()
                .map_err(|e| PkiError::Usage(format!("--scope: {e}")))?;
            p.subject_alt_names.push(uri(format!("{SAN_SCOPE}{scope}")));
        }
        for perm in perms {
            p.subject_alt_names
                .push(uri(format!("{}{perm}", rsnet_common::tls::SAN_PERM)));
        }
        for c in classes {
            p.subject_alt_names
                .push(uri(format!("{}{c}", rsnet_common::tls::SAN_CLASS)));
        }
        if matches!(role, Role::Mlm | Role::Appserver) {
            p.extended_key_usages
                .push(ExtendedKeyUsagePurpose::ServerAuth);
            let defaults = [
                "localhost".to_string(),
                "127.0.0.1".to_string(),
                "::1".to_string(),
            ];
            let hosts = if hosts.is_empty() {
                &defaults[..]
            } else {
                hosts
            };
            for h in hosts {
                p.subject_alt_names.push(match h.parse::<IpAddr>() {
                    Ok(ip) => SanType::IpAddress(ip),
                    Err(_) => {
                        SanType::DnsName(h.clone().try_into().map_err(|_| {
                            PkiError::Usage(format!("--host {h:?} is not a DNS name"))
                        })?)
                    }
                });
            }
        }
        p.use_authority_key_identifier_extension = true;
        let cert = signer(p, &self.issuer()?)?;
        index.issued.push(Issued {
            id: id.to_string(),
            role,
            serial: hex(&serial),
            revoked: false,
        });
        self.save_index(&index)?;
        Ok((cert.pem(), hex(&serial)))
    }

    /// Holds the PKI's lock (`PKI/index.lock`, an advisory `flock`) while
    /// it lives: `rsnet-certs` and an appserver that enrolls may share one
    /// directory, and the index is read, changed and written whole.
    fn lock(&self) -> Result<fs::File> {
        let p = self.dir.join("index.lock");
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .map_err(io(&p))?;
        rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive).map_err(|e| {
            PkiError::Io {
                path: p.clone(),
                source: e.into(),
            }
        })?;
        Ok(f)
    }

    /// The IDs with a revoked certificate.
    ///
    /// # Errors
    /// If the index cannot be read.
    pub fn revoked_ids(&self) -> Result<Vec<String>> {
        let mut ids: Vec<String> = self
            .index()?
            .issued
            .into_iter()
            .filter(|i| i.revoked)
            .map(|i| i.id)
            .collect();
        ids.sort();
        ids.dedup();
        Ok(ids)
    }

    /// Is the certificate with this serial (hex) revoked, or unknown here?
    ///
    /// # Errors
    /// If the index cannot be read.
    pub fn is_revoked(&self, serial: &str) -> Result<bool> {
        Ok(!self
            .index()?
            .issued
            .iter()
            .any(|i| i.serial == serial && !i.revoked))
    }

    /// Revokes every certificate issued to `id` and rewrites the CRL.
    pub fn revoke(&self, id: &str) -> Result<usize> {
        let _lock = self.lock()?;
        let mut index = self.index()?;
        let mut n = 0;
        for i in index.issued.iter_mut().filter(|i| i.id == id && !i.revoked) {
            i.revoked = true;
            n += 1;
        }
        if n == 0 {
            return Err(PkiError::Usage(format!(
                "no unrevoked certificate for {id}"
            )));
        }
        self.save_index(&index)?;
        self.write_crl()?;
        Ok(n)
    }

    fn write_crl(&self) -> Result<()> {
        let mut index = self.index()?;
        index.crl_number += 1;
        let now = OffsetDateTime::now_utc();
        let revoked = index
            .issued
            .iter()
            .filter(|i| i.revoked)
            .map(|i| RevokedCertParams {
                serial_number: SerialNumber::from_slice(&unhex(&i.serial)),
                revocation_time: now,
                reason_code: None,
                invalidity_date: None,
            })
            .collect();
        let params = CertificateRevocationListParams {
            this_update: now - Duration::minutes(1),
            next_update: now + CRL_VALIDITY,
            crl_number: SerialNumber::from(index.crl_number),
            issuing_distribution_point: None,
            revoked_certs: revoked,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(&self.issuer()?)?;
        write(&self.crl(), &crl.pem()?, false)?;
        self.save_index(&index)
    }
}

use rsnet_common::enroll::hex;

fn unhex(s: &str) -> Vec<u8> {
    rsnet_common::enroll::unhex(s).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rsnet_common::tls::Identity;

    #[test]
    fn init_makes_a_release_key_apart_from_the_ca_and_never_replaces_it() {
        let dir =
            std::env::temp_dir().join(format!("rsnet-pki-{}", rsnet_common::MessageId::new()));
        let pki = Pki::init(&dir, None).unwrap();
        let key = rsnet_common::release::ReleaseKey::load(&pki.release_key()).unwrap();
        let public = rsnet_common::release::ReleasePublicKey::load(&pki.release_pub()).unwrap();
        assert_eq!(key.public(), public);
        assert_ne!(
            fs::read(pki.release_key()).unwrap(),
            fs::read(dir.join("ca.key")).unwrap()
        );
        let e = pki.create_release_key().unwrap_err().to_string();
        assert!(e.contains("refusing to replace"), "{e}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(pki.release_key())
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // A PKI made before release keys existed gets one on request.
        fs::remove_file(pki.release_key()).unwrap();
        pki.create_release_key().unwrap();
        assert!(rsnet_common::release::ReleaseKey::load(&pki.release_key()).is_ok());
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn issued_certificates_carry_identity_and_private_keys_are_0600() {
        let dir =
            std::env::temp_dir().join(format!("rsnet-pki-{}", rsnet_common::MessageId::new()));
        let pki = Pki::init(&dir, Some("acme")).unwrap();
        assert!(
            Pki::init(&dir, None).is_err(),
            "init must refuse to overwrite a CA"
        );
        let f = pki.issue("acme.mlm1", Role::Mlm, &[], &[]).unwrap();
        let pem = fs::read_to_string(&f.cert).unwrap();
        let der = rustls_pki_der(&pem);
        let id = Identity::from_der(&der).unwrap();
        assert_eq!(id.id.as_str(), "acme.mlm1");
        assert_eq!(id.role, Role::Mlm);
        assert_eq!(id.scopes, vec!["acme".parse().unwrap()]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                fs::metadata(&f.key).unwrap().permissions().mode() & 0o777,
                0o600
            );
            assert_eq!(
                fs::metadata(dir.join("ca.key"))
                    .unwrap()
                    .permissions()
                    .mode()
                    & 0o777,
                0o600
            );
        }
        assert_eq!(pki.revoke("acme.mlm1").unwrap(), 1);
        assert!(pki.revoke("acme.mlm1").is_err());
        assert!(fs::read_to_string(pki.crl()).unwrap().contains("X509 CRL"));
        fs::remove_dir_all(dir).unwrap();
    }

    fn rustls_pki_der(pem: &str) -> Vec<u8> {
        use base64_free::decode;
        decode(pem)
    }

    mod base64_free {
        // Tiny PEM body decoder for the test, to avoid a dev-dependency.
        pub fn decode(pem: &str) -> Vec<u8> {
            let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
            let table = |c: u8| -> u32 {
                match c {
                    b'A'..=b'Z' => (c - b'A') as u32,
                    b'a'..=b'z' => (c - b'a' + 26) as u32,
                    b'0'..=b'9' => (c - b'0' + 52) as u32,
                    b'+' => 62,
                    _ => 63,
                }
            };
            let b = body.trim_end_matches('=').as_bytes();
            let mut out = Vec::new();
            for chunk in b.chunks(4) {
                let mut n = 0u32;
                for (i, &c) in chunk.iter().enumerate() {
                    n |= table(c) << (18 - 6 * i);
                }
                let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
                out.extend_from_slice(&bytes[..chunk.len() - 1]);
            }
            out
        }
    }
}
