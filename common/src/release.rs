//! Release manifests and their signatures (DESIGN.md §7).
//!
//! A release (a software update, a configuration, integration metadata) is
//! described by a [`Manifest`]: its ID, kind, version, size, SHA-256 and
//! target. The appserver signs the manifest with the provider's **release
//! key** ([`ReleaseKey`], Ed25519), which `rsnet-certs` creates beside the
//! TLS CA but separate from it: a leaked TLS key cannot sign a release, and
//! the release key never sits on a TLS endpoint. Proxies hold only the
//! public half ([`ReleasePublicKey`]) and check the signature, then the
//! file's size and hash against the manifest, before they report a release
//! delivered, so no MLM on the path can substitute a file.
//!
//! The signature covers a canonical encoding of the manifest
//! ([`Manifest::signed_bytes`]): a domain-separation line, then the
//! manifest as JSON with its fields in a fixed order. Anything that parses
//! differently signs differently.
//!
//! Down the tree a release travels as an **offer**: a back-channel message
//! of class [`CLASS`], subclass [`OFFER`], whose `data` payload is the
//! signed manifest as JSON ([`offer_content`], [`offer_of`]). Destinations
//! report where they are with [`Report`]s, forward messages of the same
//! class whose subclass is the [`DestState`].
//!
//! Files (PEM-like text, so an operator can tell them apart):
//!
//! ```text
//! release.key   -----BEGIN RSNET RELEASE KEY----- / base64 PKCS#8 (Ed25519) / -----END …   (0600)
//! release.pub   ed25519:BASE64 of the 32-byte public key
//! ```

use std::path::Path;

use base64::Engine as _;
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use serde::{Deserialize, Serialize};

use crate::limits::{MAX_DESTINATIONS, MAX_ID_BYTES};

/// The first line of every signed encoding: which format, which version.
const DOMAIN: &[u8] = b"rsnet-release-manifest-v1\n";
const KEY_BEGIN: &str = "-----BEGIN RSNET RELEASE KEY-----";
const KEY_END: &str = "-----END RSNET RELEASE KEY-----";
const PUB_PREFIX: &str = "ed25519:";
/// Longest version string.
pub const MAX_VERSION_BYTES: usize = 64;

/// Why a key, a manifest or a signature is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReleaseError {
    /// A key file is missing, unreadable or not a release key.
    #[error("release key: {0}")]
    Key(String),
    /// A manifest field breaks its rule (named).
    #[error("manifest: {0}")]
    Invalid(String),
    /// The signature does not verify under the release key: the manifest
    /// was changed, or signed by another key.
    #[error("manifest signature does not verify under the release key")]
    BadSignature,
    /// The file does not match the manifest.
    #[error("file does not match the manifest: {0}")]
    Mismatch(String),
}

/// What a release is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReleaseKind {
    /// A software update.
    Software,
    /// A configuration.
    Config,
    /// Integration metadata.
    Metadata,
}

/// What a signed release says about its file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Release ID.
    pub id: String,
    /// Kind.
    pub kind: ReleaseKind,
    /// What it updates (`agent`, `solaris-config`): a proxy keeps the
    /// current and the previous version of each item. `[a-z0-9_.-]`, 1..=64 bytes.
    pub item: String,
    /// Version, as the operator names it (1..=64 bytes).
    pub version: String,
    /// File size in bytes.
    pub size: u64,
    /// SHA-256 of the file, 64 lowercase hex digits.
    pub sha256: String,
    /// Who it is for: component IDs and/or `group:NAME`s (1..=10,000).
    pub target: Vec<String>,
}

impl Manifest {
    /// Checks every field's rule.
    ///
    /// # Errors
    /// [`ReleaseError::Invalid`] naming the field.
    pub fn validate(&self) -> Result<(), ReleaseError> {
        let bad = |s: String| Err(ReleaseError::Invalid(s));
        if self.id.is_empty() || self.id.len() > MAX_ID_BYTES {
            return bad(format!("id: 1..={MAX_ID_BYTES} bytes"));
        }
        if !crate::model::valid_class(&self.item) {
            return bad("item: [a-z0-9_.-], 1..=64 bytes".into());
        }
        if self.version.is_empty()
            || self.version.len() > MAX_VERSION_BYTES
            || !self.version.bytes().all(|b| b.is_ascii_graphic())
        {
            return bad(format!(
                "version: 1..={MAX_VERSION_BYTES} visible ASCII bytes"
            ));
        }
        if !crate::bulk::is_sha256_hex(&self.sha256) {
            return bad("sha256: 64 lowercase hex digits".into());
        }
        if self.target.is_empty() || self.target.len() > MAX_DESTINATIONS {
            return bad(format!("target: 1..={MAX_DESTINATIONS} entries"));
        }
        for (i, t) in self.target.iter().enumerate() {
            let ok = if t.starts_with("group:") {
                t.parse::<crate::id::GroupName>().is_ok()
            } else {
                t.parse::<crate::id::ComponentId>().is_ok()
            };
            if !ok {
                return bad(format!(
                    "target[{i}]: {t:?} is neither an ID nor group:NAME"
                ));
            }
        }
        Ok(())
    }

    /// The bytes a signature covers.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut v = DOMAIN.to_vec();
        // Serialising a struct writes its fields in declaration order: canonical.
        v.extend(serde_json::to_vec(self).unwrap_or_default());
        v
    }

    /// Checks a downloaded file's size and SHA-256 (hex) against the manifest.
    ///
    /// # Errors
    /// [`ReleaseError::Mismatch`] saying which.
    pub fn check_file(&self, size: u64, sha256_hex: &str) -> Result<(), ReleaseError> {
        if size != self.size {
            return Err(ReleaseError::Mismatch(format!(
                "{size} bytes, the manifest says {}",
                self.size
            )));
        }
        if !sha256_hex.eq_ignore_ascii_case(&self.sha256) {
            return Err(ReleaseError::Mismatch("sha256 differs".into()));
        }
        Ok(())
    }
}

/// A manifest with its signature, as it travels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedManifest {
    /// The manifest.
    pub manifest: Manifest,
    /// Ed25519 signature of [`Manifest::signed_bytes`], base64.
    pub signature: String,
}

/// The provider's release signing key (the appserver's).
pub struct ReleaseKey(Ed25519KeyPair);

impl ReleaseKey {
    /// A new key, as the text of a `release.key` file.
    ///
    /// # Errors
    /// If the system's random source fails.
    pub fn generate() -> Result<String, ReleaseError> {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng)
            .map_err(|_| ReleaseError::Key("cannot generate a key".into()))?;
        let b64 = base64::engine::general_purpose::STANDARD.encode(pkcs8.as_ref());
        Ok(format!("{KEY_BEGIN}\n{b64}\n{KEY_END}\n"))
    }

    /// Parses the text of a `release.key` file.
    ///
    /// # Errors
    /// [`ReleaseError::Key`] if it is not one.
    pub fn from_text(text: &str) -> Result<ReleaseKey, ReleaseError> {
        let body: String = text
            .lines()
            .map(str::trim)
            .skip_while(|l| *l != KEY_BEGIN)
            .skip(1)
            .take_while(|l| *l != KEY_END)
            .collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(body)
            .map_err(|e| ReleaseError::Key(format!("not base64: {e}")))?;
        Ed25519KeyPair::from_pkcs8(&der)
            .map(ReleaseKey)
            .map_err(|e| ReleaseError::Key(format!("not an Ed25519 PKCS#8 key: {e}")))
    }

    /// Reads a `release.key` file.
    ///
    /// # Errors
    /// [`ReleaseError::Key`], naming the file.
    pub fn load(path: &Path) -> Result<ReleaseKey, ReleaseError> {
        let t = std::fs::read_to_string(path)
            .map_err(|e| ReleaseError::Key(format!("{}: {e}", path.display())))?;
        Self::from_text(&t).map_err(|e| ReleaseError::Key(format!("{}: {e}", path.display())))
    }

    /// The public half.
    pub fn public(&self) -> ReleasePublicKey {
        let mut k = [0u8; 32];
        k.copy_from_slice(self.0.public_key().as_ref());
        ReleasePublicKey(k)
    }

    /// Signs `msg` (the caller puts a domain of its own in front).
    pub fn sign_bytes(&self, msg: &[u8]) -> Vec<u8> {
        self.0.sign(msg).as_ref().to_vec()
    }

    /// Signs a manifest after checking it.
    ///
    /// # Errors
    /// [`ReleaseError::Invalid`] for a manifest that breaks a rule.
    pub fn sign(&self, manifest: Manifest) -> Result<SignedManifest, ReleaseError> {
        manifest.validate()?;
        let sig = self.0.sign(&manifest.signed_bytes());
        Ok(SignedManifest {
            signature: base64::engine::general_purpose::STANDARD.encode(sig.as_ref()),
            manifest,
        })
    }
}

/// The public half of the release key (every proxy's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReleasePublicKey([u8; 32]);

impl ReleasePublicKey {
    /// The text of a `release.pub` file.
    pub fn to_text(&self) -> String {
        format!(
            "{PUB_PREFIX}{}\n",
            base64::engine::general_purpose::STANDARD.encode(self.0)
        )
    }

    /// Parses the text of a `release.pub` file.
    ///
    /// # Errors
    /// [`ReleaseError::Key`] if it is not one.
    pub fn from_text(text: &str) -> Result<ReleasePublicKey, ReleaseError> {
        let b64 = text
            .trim()
            .strip_prefix(PUB_PREFIX)
            .ok_or_else(|| ReleaseError::Key(format!("does not start with {PUB_PREFIX}")))?;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| ReleaseError::Key(format!("not base64: {e}")))?;
        let k: [u8; 32] = raw
            .try_into()
            .map_err(|_| ReleaseError::Key("an Ed25519 public key is 32 bytes".into()))?;
        Ok(ReleasePublicKey(k))
    }

    /// Reads a `release.pub` file.
    ///
    /// # Errors
    /// [`ReleaseError::Key`], naming the file.
    pub fn load(path: &Path) -> Result<ReleasePublicKey, ReleaseError> {
        let t = std::fs::read_to_string(path)
            .map_err(|e| ReleaseError::Key(format!("{}: {e}", path.display())))?;
        Self::from_text(&t).map_err(|e| ReleaseError::Key(format!("{}: {e}", path.display())))
    }

    /// Does `sig` verify `msg` ([`ReleaseKey::sign_bytes`])?
    pub fn verify_bytes(&self, msg: &[u8], sig: &[u8]) -> bool {
        UnparsedPublicKey::new(&ED25519, &self.0)
            .verify(msg, sig)
            .is_ok()
    }

    /// The manifest, if the signature verifies and the manifest keeps every rule.
    ///
    /// # Errors
    /// [`ReleaseError::BadSignature`], or [`ReleaseError::Invalid`].
    pub fn verify<'a>(&self, signed: &'a SignedManifest) -> Result<&'a Manifest, ReleaseError> {
        let sig = base64::engine::general_purpose::STANDARD
            .decode(&signed.signature)
            .map_err(|_| ReleaseError::BadSignature)?;
        UnparsedPublicKey::new(&ED25519, &self.0)
            .verify(&signed.manifest.signed_bytes(), &sig)
            .map_err(|_| ReleaseError::BadSignature)?;
        signed.manifest.validate()?;
        Ok(&signed.manifest)
    }
}

/// Reads `[releases] public_key`, if set.
///
/// # Errors
/// [`ReleaseError::Key`], naming the file.
pub fn load_public(path: Option<&Path>) -> Result<Option<ReleasePublicKey>, ReleaseError> {
    path.map(ReleasePublicKey::load).transpose()
}

/// The class of release offers and reports.
pub const CLASS: &str = "release";
/// The subclass of an offer (back-channel).
pub const OFFER: &str = "offer";
/// The pseudo-queue where a receiver keeps the offers it has taken (their
/// received mark durable) and not yet acted on.
pub const PENDING: &str = "^release";
/// True for a back-channel offer of a release.
pub fn is_offer(h: &crate::Header) -> bool {
    h.class == CLASS && h.subclass.as_deref() == Some(OFFER)
}
/// The MIME type of an offer's payload: the [`SignedManifest`] as JSON.
pub const OFFER_MIME: &str = "application/vnd.rsnet.release-offer+json";
/// The subclass of a cancellation (back-channel).
pub const CANCEL: &str = "cancel";
/// The MIME type of a cancellation's payload: `{"release": ID}`.
pub const CANCEL_MIME: &str = "application/vnd.rsnet.release-cancel+json";
/// The MIME type of a [`Report`]'s payload.
pub const REPORT_MIME: &str = "application/vnd.rsnet.release-report+json";
/// Where a child fetches a release's file from its parent: `/rs/v1/releases/ID/file`.
pub fn file_path(id: &crate::MessageId) -> String {
    format!("/rs/v1/releases/{id}/file")
}

/// The release ID of a file path ([`file_path`]), if it is one.
pub fn id_of_path(path: &str) -> Option<crate::MessageId> {
    path.strip_prefix("/rs/v1/releases/")?
        .strip_suffix("/file")?
        .parse()
        .ok()
}

/// True for a back-channel cancellation of a release.
pub fn is_cancel(h: &crate::Header) -> bool {
    h.class == CLASS && h.subclass.as_deref() == Some(CANCEL)
}

/// The content of a cancellation of release `id`.
pub fn cancel_content(id: &crate::MessageId) -> crate::model::Content {
    crate::model::Content::Data(crate::model::Data {
        mime: CANCEL_MIME.into(),
        encoding: crate::model::Encoding::Text,
        payload: serde_json::to_vec(&serde_json::json!({ "release": id.to_string() }))
            .unwrap_or_default()
            .into(),
    })
}

/// The release a cancellation names.
pub fn cancel_of(content: &crate::model::Content) -> Option<crate::MessageId> {
    let crate::model::Content::Data(d) = content else {
        return None;
    };
    if d.mime != CANCEL_MIME {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&d.payload).ok()?;
    v["release"].as_str()?.parse().ok()
}

/// The content of an offer of `signed`.
pub fn offer_content(signed: &SignedManifest) -> crate::model::Content {
    crate::model::Content::Data(crate::model::Data {
        mime: OFFER_MIME.into(),
        encoding: crate::model::Encoding::Text,
        payload: serde_json::to_vec(signed).unwrap_or_default().into(),
    })
}

/// The signed manifest an offer carries, its release ID checked as a
/// message ID (it names files). The signature is **not** checked here.
///
/// # Errors
/// Not an offer, or a payload that does not parse.
pub fn offer_of(
    content: &crate::model::Content,
) -> Result<(crate::MessageId, SignedManifest), ReleaseError> {
    let crate::model::Content::Data(d) = content else {
        return Err(ReleaseError::Invalid("an offer carries data".into()));
    };
    if d.mime != OFFER_MIME {
        return Err(ReleaseError::Invalid(format!("offer mime {:?}", d.mime)));
    }
    let signed: SignedManifest = serde_json::from_slice(&d.payload)
        .map_err(|e| ReleaseError::Invalid(format!("offer: {e}")))?;
    let id: crate::MessageId = signed
        .manifest
        .id
        .parse()
        .ok()
        // In its one canonical form: the ID names files and is compared as text.
        .filter(|id: &crate::MessageId| id.to_string() == signed.manifest.id)
        .ok_or_else(|| ReleaseError::Invalid("id: not a release ID".into()))?;
    signed.manifest.validate()?;
    Ok((id, signed))
}

/// Where a destination (or an MLM on the path) is with a release.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DestState {
    /// Sent toward it; it has not said anything yet.
    Queued,
    /// It received the offer.
    Offered,
    /// It cannot take it now (`reason`); it tries again.
    Rejected,
    /// Downloading (`bytes` so far).
    Fetching,
    /// Signature and file checked; the file is held.
    Delivered,
    /// A local integrator applied it.
    Applied,
    /// Refused for good (a bad signature, a file that does not match), or
    /// an integrator failed to apply it (`reason`).
    Failed,
    /// (An MLM) holds the checked file and offers it below.
    Cached,
}

impl DestState {
    /// The subclass a report of this state travels with.
    pub fn as_str(self) -> &'static str {
        match self {
            DestState::Queued => "queued",
            DestState::Offered => "offered",
            DestState::Rejected => "rejected",
            DestState::Fetching => "fetching",
            DestState::Delivered => "delivered",
            DestState::Applied => "applied",
            DestState::Failed => "failed",
            DestState::Cached => "cached",
        }
    }

    /// True once nothing more is to happen at that destination.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            DestState::Delivered | DestState::Applied | DestState::Failed
        )
    }
}

/// A destination's report on a release (a forward message, class [`CLASS`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    /// The release ID.
    pub release: String,
    /// Where it is.
    pub state: DestState,
    /// Bytes held so far (fetching).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// Why (rejected, failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Report {
    /// The forward message carrying this report from `from` (its first hop).
    pub fn message(&self, from: &crate::ComponentId) -> crate::Message {
        let mut r = self.clone();
        if let Some(why) = &mut r.reason {
            crate::envelope::truncate(why, crate::limits::MAX_REASON_BYTES);
        }
        crate::Message::originated(
            from.clone(),
            CLASS,
            Some(self.state.as_str()),
            crate::model::Content::Data(crate::model::Data {
                mime: REPORT_MIME.into(),
                encoding: crate::model::Encoding::Text,
                payload: serde_json::to_vec(&r).unwrap_or_default().into(),
            }),
        )
        .with_hop(from)
    }

    /// The report a content carries, if it is one (the release ID checked).
    pub fn of(content: &crate::model::Content) -> Option<Report> {
        let crate::model::Content::Data(d) = content else {
            return None;
        };
        if d.mime != REPORT_MIME {
            return None;
        }
        let mut r: Report = serde_json::from_slice(&d.payload).ok()?;
        r.release = r.release.parse::<crate::MessageId>().ok()?.to_string();
        if let Some(why) = &mut r.reason {
            crate::envelope::truncate(why, crate::limits::MAX_REASON_BYTES);
        }
        Some(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Manifest {
        Manifest {
            id: "rel-1".into(),
            kind: ReleaseKind::Software,
            item: "agent".into(),
            version: "2.4.1".into(),
            size: 1234,
            sha256: "a".repeat(64),
            target: vec!["group:acme-solaris".into(), "acme.p7".into()],
        }
    }

    #[test]
    fn a_signed_manifest_verifies_and_any_change_breaks_it() {
        let key = ReleaseKey::from_text(&ReleaseKey::generate().unwrap()).unwrap();
        let public = ReleasePublicKey::from_text(&key.public().to_text()).unwrap();
        let signed = key.sign(manifest()).unwrap();
        assert_eq!(public.verify(&signed).unwrap(), &manifest());
        // Through JSON, as it travels.
        let back: SignedManifest =
            serde_json::from_str(&serde_json::to_string(&signed).unwrap()).unwrap();
        assert!(public.verify(&back).is_ok());
        // An MLM on the path swaps the file: a new hash, a new size, a wider target.
        for tamper in [
            |m: &mut Manifest| m.sha256 = "b".repeat(64),
            |m: &mut Manifest| m.size += 1,
            |m: &mut Manifest| m.target.push("globex.p1".into()),
            |m: &mut Manifest| m.kind = ReleaseKind::Config,
            |m: &mut Manifest| m.item = "other".into(),
        ] {
            let mut t = signed.clone();
            tamper(&mut t.manifest);
            assert_eq!(public.verify(&t), Err(ReleaseError::BadSignature));
        }
        // Another key, or a garbled signature.
        let other = ReleaseKey::from_text(&ReleaseKey::generate().unwrap()).unwrap();
        assert_eq!(
            other.public().verify(&signed),
            Err(ReleaseError::BadSignature)
        );
        let mut g = signed.clone();
        g.signature = "!!not base64".into();
        assert_eq!(public.verify(&g), Err(ReleaseError::BadSignature));
        g.signature = String::new();
        assert_eq!(public.verify(&g), Err(ReleaseError::BadSignature));
    }

    #[test]
    fn manifests_and_keys_are_checked_with_clear_errors() {
        let key = ReleaseKey::from_text(&ReleaseKey::generate().unwrap()).unwrap();
        for (change, field) in [
            (
                Box::new(|m: &mut Manifest| m.sha256 = "A".repeat(64))
                    as Box<dyn Fn(&mut Manifest)>,
                "sha256",
            ),
            (
                Box::new(|m: &mut Manifest| m.version = "two words".into()),
                "version",
            ),
            (Box::new(|m: &mut Manifest| m.target.clear()), "target"),
            (
                Box::new(|m: &mut Manifest| m.target = vec!["../etc".into()]),
                "target[0]",
            ),
            (Box::new(|m: &mut Manifest| m.id.clear()), "id"),
            (Box::new(|m: &mut Manifest| m.item = "A B".into()), "item"),
        ] {
            let mut m = manifest();
            change(&mut m);
            let e = key.sign(m).unwrap_err().to_string();
            assert!(e.contains(field), "{e}");
        }
        assert!(ReleaseKey::from_text("nope").is_err());
        assert!(ReleasePublicKey::from_text("ed25519:AAAA").is_err());
        assert!(ReleasePublicKey::from_text("rsa:AAAA").is_err());
        let m = manifest();
        assert!(m.check_file(1234, &"A".repeat(64)).is_ok());
        assert!(matches!(
            m.check_file(1233, &m.sha256),
            Err(ReleaseError::Mismatch(_))
        ));
        assert!(matches!(
            m.check_file(1234, &"b".repeat(64)),
            Err(ReleaseError::Mismatch(_))
        ));
    }
}

#[cfg(test)]
mod travel_tests {
    use super::*;

    #[test]
    fn offers_and_reports_round_trip_and_hostile_ones_are_refused() {
        let key = ReleaseKey::from_text(&ReleaseKey::generate().unwrap()).unwrap();
        let id = crate::MessageId::new();
        let signed = key
            .sign(Manifest {
                id: id.to_string(),
                kind: ReleaseKind::Config,
                item: "cfg".into(),
                version: "1".into(),
                size: 3,
                sha256: "a".repeat(64),
                target: vec!["acme.p1".into()],
            })
            .unwrap();
        let (got, back) = offer_of(&offer_content(&signed)).unwrap();
        assert_eq!((got, &back), (id, &signed));
        assert_eq!(id_of_path(&file_path(&id)), Some(id));
        assert_eq!(id_of_path("/rs/v1/releases/../x/file"), None);
        let mut evil = signed.clone();
        evil.manifest.id = "../../etc".into();
        assert!(offer_of(&offer_content(&evil)).is_err(), "IDs name files");
        evil.manifest.id = id.to_string().to_uppercase();
        assert!(
            offer_of(&offer_content(&evil)).is_err(),
            "one canonical form (fuzz finding)"
        );
        let r = Report {
            release: id.to_string(),
            state: DestState::Fetching,
            bytes: Some(2),
            reason: Some("x".repeat(1000)),
        };
        let m = r.message(&"acme.p1".parse().unwrap());
        assert_eq!(m.header.subclass.as_deref(), Some("fetching"));
        let back = Report::of(&m.content).unwrap();
        assert_eq!(back.bytes, Some(2));
        assert!(back.reason.unwrap().len() <= crate::limits::MAX_REASON_BYTES);
        let mut bad = r.clone();
        bad.release = "not-an-id".into();
        assert!(Report::of(&bad.message(&"acme.p1".parse().unwrap()).content).is_none());
    }
}
