//! Sealed control actions (DESIGN.md §9, downward trust): a control action
//! is carried out only if the appserver signed it, for the destination
//! that carries it out. An MLM on the path relays the back-channel and is
//! trusted for its scopes, but it cannot make one up, change one, or hand
//! one to a node it was not addressed to.
//!
//! The appserver signs with the release key (Ed25519, apart from the TLS
//! CA; every proxy and MLM has the public half as `[releases] public_key`).
//! The sealed message is a `data` message of MIME type [`SEALED_MIME`]
//! whose payload is `{"statement": S, "signature": BASE64}`, S the JSON
//! text of a [`Statement`]; the signature covers [`DOMAIN`] followed by S.
//! MLMs pass content bytes through unchanged, so S arrives as signed.
//!
//! A receiver checks, before it acts: the signature; that the statement
//! is for this message ID and action; that the destination it would act
//! for is in the audience; that it has not expired. The audience lists
//! every final destination (at most [`MAX_AUDIENCE`]).

use base64::Engine;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::id::{ComponentId, MessageId};
use crate::model::{Content, ContentKind, Data, Encoding, Header, Timestamp};
use crate::release::{ReleaseKey, ReleasePublicKey};

/// The MIME type of a sealed control action's payload.
pub const SEALED_MIME: &str = "application/vnd.rsnet.sealed-control+json";
/// What a seal's signature covers first (never a release manifest's).
pub const DOMAIN: &[u8] = b"rsnet-control-v1\n";
/// Most final destinations one control action may have.
pub const MAX_AUDIENCE: usize = 1000;
/// Longest a seal holds when the message sets no earlier expiry: well
/// inside the 24 h a receiver remembers the IDs it took, so an MLM that
/// keeps a sealed action cannot replay it once its receiver has forgotten.
pub const MAX_AGE: std::time::Duration = std::time::Duration::from_secs(12 * 3600);

/// What the appserver signs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Statement {
    /// The message.
    pub id: MessageId,
    /// The action (the message's subclass).
    pub action: String,
    /// Every final destination, sorted.
    pub audience: Vec<ComponentId>,
    /// When it was made (ms since the epoch).
    pub created: u64,
    /// Not carried out after this (ms since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiry: Option<u64>,
    /// The kind of the content the operator sent.
    pub kind: String,
    /// That content, as encoded on the wire, base64.
    pub content: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Sealed {
    statement: String,
    signature: String,
}

/// Why a control action is not carried out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// Not sealed at all.
    #[error("it is not signed by the appserver")]
    Unsealed,
    /// The signature does not verify.
    #[error("its signature does not verify with this node's release public key")]
    BadSignature,
    /// Signed for another message, action or destination, or expired.
    #[error("{0}")]
    Mismatch(String),
    /// This node has no key to check it with.
    #[error("this node has no release public key ([releases] public_key) to check the appserver's signature")]
    NoKey,
    /// Too many destinations to seal.
    #[error("a control action goes to at most {MAX_AUDIENCE} destinations ({0} given); send it in parts")]
    TooManyDestinations(usize),
}

/// Seals `content` (the operator's) of the control action `header` for
/// `audience`: returns the sealed content, and sets `header.kind` to data.
///
/// # Errors
/// [`SealError::TooManyDestinations`].
pub fn seal(
    key: &ReleaseKey,
    header: &mut Header,
    content: &Content,
    audience: &[ComponentId],
) -> Result<Content, SealError> {
    if audience.len() > MAX_AUDIENCE {
        return Err(SealError::TooManyDestinations(audience.len()));
    }
    let mut audience = audience.to_vec();
    audience.sort();
    audience.dedup();
    let st = Statement {
        id: header.id,
        action: header.subclass.clone().unwrap_or_default(),
        audience,
        created: header.created.0,
        expiry: Some(
            header
                .qos
                .expiry
                .unwrap_or(Timestamp::MAX)
                .min(header.created.after(MAX_AGE))
                .0,
        ),
        kind: content.kind().as_str().into(),
        content: base64::engine::general_purpose::STANDARD
            .encode(crate::envelope::wire::encode_content(content)),
    };
    let text = serde_json::to_string(&st).unwrap_or_default();
    let mut signed = DOMAIN.to_vec();
    signed.extend_from_slice(text.as_bytes());
    let sealed = Sealed {
        statement: text,
        signature: base64::engine::general_purpose::STANDARD.encode(key.sign_bytes(&signed)),
    };
    header.kind = ContentKind::Data;
    Ok(Content::Data(Data {
        mime: SEALED_MIME.into(),
        encoding: Encoding::Text,
        payload: Bytes::from(serde_json::to_vec(&sealed).unwrap_or_default()),
    }))
}

/// Opens the sealed control action `header` + `content` for `dest` (the
/// destination the receiver would act for): the operator's header kind and
/// content bytes, if every check passes.
///
/// # Errors
/// [`SealError`]: why it must not be carried out.
pub fn open(
    key: Option<&ReleasePublicKey>,
    header: &Header,
    content: &Bytes,
    dest: &ComponentId,
    now: Timestamp,
) -> Result<(ContentKind, Bytes), SealError> {
    let Ok(Content::Data(d)) = crate::envelope::wire::decode_content(content, header.kind) else {
        return Err(SealError::Unsealed);
    };
    if d.mime != SEALED_MIME {
        return Err(SealError::Unsealed);
    }
    let key = key.ok_or(SealError::NoKey)?;
    let sealed: Sealed = serde_json::from_slice(&d.payload).map_err(|_| SealError::Unsealed)?;
    let sig = base64::engine::general_purpose::STANDARD
        .decode(&sealed.signature)
        .map_err(|_| SealError::BadSignature)?;
    let mut signed = DOMAIN.to_vec();
    signed.extend_from_slice(sealed.statement.as_bytes());
    if !key.verify_bytes(&signed, &sig) {
        return Err(SealError::BadSignature);
    }
    let st: Statement = serde_json::from_str(&sealed.statement)
        .map_err(|e| SealError::Mismatch(format!("its statement does not parse: {e}")))?;
    let mismatch = |s: String| Err(SealError::Mismatch(s));
    if st.id != header.id {
        return mismatch(format!(
            "it was signed for message {}, not {}",
            st.id, header.id
        ));
    }
    if Some(st.action.as_str()) != header.subclass.as_deref() {
        return mismatch(format!("it was signed as action {:?}", st.action));
    }
    if st.audience.binary_search(dest).is_err() {
        return mismatch(format!("the appserver did not address it to {dest}"));
    }
    if st.expiry.is_some_and(|e| e <= now.0) {
        return mismatch("it expired before it could be carried out".into());
    }
    let kind = ContentKind::parse(&st.kind)
        .ok_or_else(|| SealError::Mismatch(format!("unknown kind {:?}", st.kind)))?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(&st.content)
        .map_err(|_| SealError::Mismatch("its content is not base64".into()))?;
    Ok((kind, Bytes::from(bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Destination, Direction, Qos};

    fn header(to: &[&str]) -> Header {
        Header {
            id: MessageId::new(),
            class: crate::control::CLASS.into(),
            subclass: Some("disable-forwarding".into()),
            kind: ContentKind::Data,
            created: Timestamp::now(),
            direction: Direction::Destination(Destination {
                ids: to.iter().map(|t| t.parse().unwrap()).collect(),
                group: None,
            }),
            qos: Qos::default(),
            routing: vec![],
        }
    }

    fn key() -> ReleaseKey {
        ReleaseKey::from_text(&ReleaseKey::generate().unwrap()).unwrap()
    }

    #[test]
    fn only_what_the_appserver_sealed_for_this_destination_opens() {
        let k = key();
        let public = k.public();
        let p1: ComponentId = "acme.p1".parse().unwrap();
        let p2: ComponentId = "acme.p2".parse().unwrap();
        let original = Content::Data(Data {
            mime: "text/plain".into(),
            encoding: Encoding::Text,
            payload: Bytes::from_static(b"x = 1"),
        });
        let mut h = header(&["acme.p1"]);
        let sealed = seal(&k, &mut h, &original, std::slice::from_ref(&p1)).unwrap();
        let bytes = Bytes::from(crate::envelope::wire::encode_content(&sealed));
        let now = Timestamp::now();
        let (kind, content) = open(Some(&public), &h, &bytes, &p1, now).unwrap();
        assert_eq!(kind, ContentKind::Data);
        assert_eq!(
            crate::envelope::wire::decode_content(&content, kind).unwrap(),
            original
        );
        // Handed to another node: refused.
        let e = open(Some(&public), &h, &bytes, &p2, now).unwrap_err();
        assert!(
            e.to_string().contains("did not address it to acme.p2"),
            "{e}"
        );
        // Another action, another message, another key, none at all.
        let mut other = h.clone();
        other.subclass = Some("set-config".into());
        assert!(matches!(
            open(Some(&public), &other, &bytes, &p1, now),
            Err(SealError::Mismatch(_))
        ));
        other = h.clone();
        other.id = MessageId::new();
        assert!(matches!(
            open(Some(&public), &other, &bytes, &p1, now),
            Err(SealError::Mismatch(_))
        ));
        assert_eq!(
            open(Some(&key().public()), &h, &bytes, &p1, now),
            Err(SealError::BadSignature)
        );
        assert_eq!(open(None, &h, &bytes, &p1, now), Err(SealError::NoKey));
        // An MLM's own: unsealed, or the statement changed.
        let plain = Bytes::from(crate::envelope::wire::encode_content(&original));
        assert_eq!(
            open(Some(&public), &h, &plain, &p1, now),
            Err(SealError::Unsealed)
        );
        let Content::Data(d) = &sealed else {
            unreachable!()
        };
        let forged = String::from_utf8(d.payload.to_vec())
            .unwrap()
            .replace("acme.p1", "acme.p2");
        let forged = Content::Data(Data {
            payload: Bytes::from(forged),
            ..d.clone()
        });
        let forged = Bytes::from(crate::envelope::wire::encode_content(&forged));
        assert_eq!(
            open(Some(&public), &h, &forged, &p2, now),
            Err(SealError::BadSignature)
        );
        // Expired.
        let mut h2 = header(&["acme.p1"]);
        h2.qos.expiry = Some(Timestamp(now.0 + 10));
        let sealed = seal(&k, &mut h2, &original, std::slice::from_ref(&p1)).unwrap();
        let bytes = Bytes::from(crate::envelope::wire::encode_content(&sealed));
        assert!(open(Some(&public), &h2, &bytes, &p1, Timestamp(now.0 + 20)).is_err());
        // Too many.
        let many: Vec<ComponentId> = (0..=MAX_AUDIENCE)
            .map(|i| format!("acme.p{i}").parse().unwrap())
            .collect();
        assert!(matches!(
            seal(&k, &mut header(&[]), &original, &many),
            Err(SealError::TooManyDestinations(_))
        ));
    }
}
