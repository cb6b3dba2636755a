//! Identifiers (DESIGN.md §2): who a component is, never where it is.
//!
//! A [`ComponentId`] is lowercase `[a-z0-9-]+` labels joined by `.`; the first
//! label is the customer. Subtrees are prefix-by-label: `acme.p7.si3` is inside
//! `acme.p7`, `acme.p70` is not. Message IDs are UUIDv7, so they sort by time.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::limits::{MAX_ID_BYTES, MAX_ID_LABELS};

/// Why a string is not a valid identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// Empty, or an empty label (`acme..p7`, trailing dot).
    #[error("empty label in {0:?}")]
    EmptyLabel(String),
    /// A character outside `[a-z0-9-]`.
    #[error("invalid character {1:?} in {0:?} (allowed: a-z 0-9 - and . between labels)")]
    BadChar(String, char),
    /// Longer than [`MAX_ID_BYTES`] or more than [`MAX_ID_LABELS`] labels.
    #[error("identifier too long: {0} bytes or labels over the limit")]
    TooLong(usize),
    /// A group name without the `group:` prefix, or a bad message ID.
    #[error("{0}")]
    Malformed(String),
}

fn check_label(whole: &str, label: &str) -> Result<(), IdError> {
    if label.is_empty() {
        return Err(IdError::EmptyLabel(whole.to_string()));
    }
    if let Some(c) = label
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(IdError::BadChar(whole.to_string(), c));
    }
    Ok(())
}

/// A validated component ID such as `acme.p7` or `acme.p7.si12`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ComponentId(String);

impl ComponentId {
    /// The customer this component belongs to (the first label).
    pub fn customer(&self) -> &str {
        self.0.split('.').next().unwrap_or(&self.0)
    }

    /// True if `self` is `scope` or lies below it (`acme.p7.si1` within `acme.p7`).
    pub fn is_within(&self, scope: &ComponentId) -> bool {
        self.0 == scope.0
            || (self.0.len() > scope.0.len()
                && self.0.starts_with(&scope.0)
                && self.0.as_bytes()[scope.0.len()] == b'.')
    }

    /// The ID one level up (`acme.p7` for `acme.p7.si3`); `None` for a
    /// two-label component ID, whose parent is the customer, not a component.
    pub fn parent(&self) -> Option<ComponentId> {
        let (up, _) = self.0.rsplit_once('.')?;
        up.contains('.').then(|| ComponentId(up.to_string()))
    }

    /// The ID one level below this one: `acme.p7` + `si3` = `acme.p7.si3`.
    ///
    /// # Errors
    /// If `label` is not a valid label or the result is too long.
    pub fn child(&self, label: &str) -> Result<ComponentId, IdError> {
        format!("{}.{}", self.0, label).parse()
    }

    /// The string form.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for ComponentId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        if s.len() > MAX_ID_BYTES {
            return Err(IdError::TooLong(s.len()));
        }
        let mut labels = 0;
        for label in s.split('.') {
            check_label(s, label)?;
            labels += 1;
        }
        if labels > MAX_ID_LABELS {
            return Err(IdError::TooLong(labels));
        }
        Ok(ComponentId(s.to_string()))
    }
}

/// A group destination, written `group:NAME` (DESIGN.md §2).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupName(String);

impl GroupName {
    /// The name without the `group:` prefix.
    pub fn name(&self) -> &str {
        &self.0
    }
}

impl FromStr for GroupName {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        let name = s
            .strip_prefix("group:")
            .ok_or_else(|| IdError::Malformed(format!("group {s:?} must start with \"group:\"")))?;
        if name.len() > MAX_ID_BYTES {
            return Err(IdError::TooLong(name.len()));
        }
        check_label(s, name)?;
        Ok(GroupName(name.to_string()))
    }
}

impl fmt::Display for GroupName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "group:{}", self.0)
    }
}

/// A message ID: a UUIDv7 (time-ordered), unique across the network.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(uuid::Uuid);

/// The last (milliseconds << 12 | counter) handed out: IDs made in one
/// process sort in the order they were made, even within a millisecond.
static LAST_V7: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl MessageId {
    /// A fresh, time-ordered ID: a UUIDv7 of the current millisecond, a
    /// 12-bit counter (rand_a) that keeps IDs of one process in order,
    /// and 62 random bits (rand_b) from the OS.
    pub fn new() -> Self {
        use std::sync::atomic::Ordering;
        let Some(random) = crate::random::u64() else {
            return MessageId(uuid::Uuid::now_v7());
        };
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let mut prev = LAST_V7.load(Ordering::Relaxed);
        let next = loop {
            // A counter that runs past 12 bits carries into the millisecond.
            let next = (now_ms << 12).max(prev + 1);
            match LAST_V7.compare_exchange_weak(prev, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => break next,
                Err(p) => prev = p,
            }
        };
        let (ms, counter) = (next >> 12, (next & 0xfff) as u16);
        let mut b = [0u8; 10];
        b[..2].copy_from_slice(&counter.to_be_bytes());
        b[2..].copy_from_slice(&random.to_be_bytes());
        MessageId(uuid::Builder::from_unix_timestamp_millis(ms, &b).into_uuid())
    }
    /// The 16 bytes, for compact store keys.
    pub fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }
    /// The hyphenated lowercase text of [`fmt::Display`], appended to `s`
    /// without a formatter (the header encoder, once per message).
    pub fn push_str_to(&self, s: &mut String) {
        let mut buf = uuid::Uuid::encode_buffer();
        s.push_str(self.0.hyphenated().encode_lower(&mut buf));
    }
    /// From the 16 bytes of [`MessageId::as_bytes`].
    pub fn from_bytes(b: [u8; 16]) -> Self {
        MessageId(uuid::Uuid::from_bytes(b))
    }
    /// The time a v7 ID was made, in milliseconds since the Unix epoch
    /// (its first 48 bits); `None` for any other kind of UUID.
    pub fn millis(&self) -> Option<u64> {
        if self.0.get_version_num() != 7 {
            return None;
        }
        let b = self.0.as_bytes();
        Some(b[..6].iter().fold(0u64, |t, x| (t << 8) | u64::from(*x)))
    }
}

impl Default for MessageId {
    fn default() -> Self {
        Self::new()
    }
}

impl FromStr for MessageId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        if s.len() != 36 {
            return Err(IdError::Malformed(format!(
                "message id {s:?} is not a UUID"
            )));
        }
        uuid::Uuid::parse_str(s)
            .map(MessageId)
            .map_err(|_| IdError::Malformed(format!("message id {s:?} is not a UUID")))
    }
}

macro_rules! string_like {
    ($t:ty) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self)
            }
        }
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = std::borrow::Cow::<str>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}
string_like!(ComponentId);
string_like!(MessageId);
impl fmt::Debug for GroupName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self)
    }
}
impl Serialize for GroupName {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}
impl<'de> Deserialize<'de> for GroupName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = std::borrow::Cow::<str>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn message_ids_are_v7_in_the_order_made_and_unique_across_threads() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let ids: Vec<super::MessageId> = (0..20_000).map(|_| super::MessageId::new()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "in the order made");
        let ms = ids[0].millis().expect("v7");
        assert!(ms >= now && ms < now + 5_000, "{ms} against {now}");
        let threads: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(|| {
                    (0..5_000)
                        .map(|_| super::MessageId::new())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all: std::collections::HashSet<super::MessageId> = ids.into_iter().collect();
        for t in threads {
            for id in t.join().unwrap() {
                assert!(all.insert(id), "unique");
            }
        }
        assert_eq!(all.len(), 40_000);
        // The low 62 bits are random, not a counter.
        let (a, b) = (ids_random(&all), all.len());
        assert!(a > b - 10, "{a} distinct random parts of {b}");
    }

    fn ids_random(ids: &std::collections::HashSet<super::MessageId>) -> usize {
        ids.iter()
            .map(|i| <[u8; 8]>::try_from(&i.as_bytes()[8..]).unwrap())
            .collect::<std::collections::HashSet<_>>()
            .len()
    }

    use super::*;

    #[test]
    fn grammar() {
        assert!("acme".parse::<ComponentId>().is_ok());
        assert!("acme.p7.si12".parse::<ComponentId>().is_ok());
        assert!("acme-2.p-7".parse::<ComponentId>().is_ok());
        for bad in [
            "", "Acme", "acme..p7", "acme.", ".acme", "acme p7", "acme/p7", "ac_me",
        ] {
            assert!(bad.parse::<ComponentId>().is_err(), "{bad:?} accepted");
        }
        assert!("a.b.c.d.e.f.g.h.i".parse::<ComponentId>().is_err());
    }

    #[test]
    fn subtree_is_by_label() {
        let p7: ComponentId = "acme.p7".parse().unwrap();
        assert!("acme.p7".parse::<ComponentId>().unwrap().is_within(&p7));
        assert!("acme.p7.si3".parse::<ComponentId>().unwrap().is_within(&p7));
        assert!(!"acme.p70".parse::<ComponentId>().unwrap().is_within(&p7));
        assert!(!"acme".parse::<ComponentId>().unwrap().is_within(&p7));
        assert_eq!(p7.customer(), "acme");
    }

    #[test]
    fn groups_and_message_ids() {
        assert_eq!(
            "group:acme-solaris".parse::<GroupName>().unwrap().name(),
            "acme-solaris"
        );
        assert!("acme-solaris".parse::<GroupName>().is_err());
        let id = MessageId::new();
        assert_eq!(id.to_string().parse::<MessageId>().unwrap(), id);
        assert!("not-a-uuid".parse::<MessageId>().is_err());
    }
}
