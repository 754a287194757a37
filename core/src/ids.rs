//! Identifiers of the things the data plane stores, and of who stores them.
//!
//! An item is identified by 128 random bits; a stripe by its item and its index
//! (0..k are data, k..n parity). Their text form is what logs, metrics and file
//! names use, so one grep follows a stripe from the writer to the disk.
//!
//! A fileset is named by a [`FilesetName`] and a chunkserver by a
//! [`ServerId`]: text checked once, where it comes in, and carried as its
//! own type from there on, so a server id is never taken for a name.

use std::borrow::Borrow;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ItemId(pub [u8; 16]);

impl ItemId {
    pub fn from_bytes(b: &[u8]) -> Result<Self, IdError> {
        let arr: [u8; 16] = b.try_into().map_err(|_| IdError::ItemLength(b.len()))?;
        Ok(Self(arr))
    }

    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl fmt::Display for ItemId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for ItemId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ItemId({self})")
    }
}

impl FromStr for ItemId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        let bytes = hex::decode(s).map_err(|_| IdError::ItemText(s.to_string()))?;
        Self::from_bytes(&bytes).map_err(|_| IdError::ItemText(s.to_string()))
    }
}

/// One stripe of one item.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StripeId {
    pub item: ItemId,
    pub index: u16,
}

impl StripeId {
    pub fn new(item: ItemId, index: u16) -> Self {
        Self { item, index }
    }
}

impl fmt::Display for StripeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.item, self.index)
    }
}

impl fmt::Debug for StripeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StripeId({self})")
    }
}

impl FromStr for StripeId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        let (item, index) = s.split_once('.').ok_or_else(|| IdError::StripeText(s.to_string()))?;
        let index = index.parse().map_err(|_| IdError::StripeText(s.to_string()))?;
        Ok(Self { item: item.parse()?, index })
    }
}

/// Longest fileset name, in bytes (a DNS label, as Kubernetes object names are).
pub const MAX_FILESET_NAME: usize = 63;

/// Longest server id, in bytes (as long as a DNS subdomain: node and pod
/// names fit).
pub const MAX_SERVER_ID: usize = 253;

/// A fileset's name: 1 to [`MAX_FILESET_NAME`] lowercase letters, digits
/// and '-', not starting or ending with '-'.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct FilesetName(String);

impl FilesetName {
    pub fn new(name: impl Into<String>) -> Result<Self, IdError> {
        let name = name.into();
        let ok = !name.is_empty()
            && name.len() <= MAX_FILESET_NAME
            && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !name.starts_with('-')
            && !name.ends_with('-');
        if ok { Ok(Self(name)) } else { Err(IdError::FilesetName(name)) }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A chunkserver's id: 1 to [`MAX_SERVER_ID`] bytes of printable ASCII
/// without spaces (node and pod names, `cs0`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ServerId(String);

impl ServerId {
    pub fn new(id: impl Into<String>) -> Result<Self, IdError> {
        let id = id.into();
        let ok = !id.is_empty() && id.len() <= MAX_SERVER_ID && id.bytes().all(|b| b.is_ascii_graphic());
        if ok { Ok(Self(id)) } else { Err(IdError::ServerId(id)) }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

macro_rules! text_id {
    ($t:ident) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:?}", self.0)
            }
        }

        impl FromStr for $t {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl TryFrom<String> for $t {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl From<$t> for String {
            fn from(id: $t) -> String {
                id.0
            }
        }

        impl AsRef<str> for $t {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        // Maps keyed by the id are looked up by text: the order and hash
        // are the text's.
        impl Borrow<str> for $t {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl PartialEq<str> for $t {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $t {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }
    };
}

text_id!(FilesetName);
text_id!(ServerId);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("an item id is 16 bytes, got {0}")]
    ItemLength(usize),
    #[error("{0:?} is not an item id (32 hex digits)")]
    ItemText(String),
    #[error("{0:?} is not a stripe id (ITEM.INDEX)")]
    StripeText(String),
    #[error(
        "{0:?} is not a valid fileset name: 1 to {MAX_FILESET_NAME} lowercase letters, digits and '-', not starting or ending with '-'"
    )]
    FilesetName(String),
    #[error("{0:?} is not a valid server id: 1 to {MAX_SERVER_ID} printable characters, no spaces")]
    ServerId(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stripe_ids_round_trip_through_text() {
        let id = StripeId::new(ItemId([0xab; 16]), 7);
        let s = id.to_string();
        assert_eq!(s, format!("{}.7", "ab".repeat(16)));
        assert_eq!(s.parse::<StripeId>().unwrap(), id);
    }

    #[test]
    fn malformed_ids_are_rejected_with_the_text() {
        assert_eq!("xyz".parse::<ItemId>().unwrap_err(), IdError::ItemText("xyz".into()));
        assert!(matches!("ab.1".parse::<StripeId>(), Err(IdError::ItemText(_))));
        assert!(matches!("nodot".parse::<StripeId>(), Err(IdError::StripeText(_))));
        assert_eq!(ItemId::from_bytes(&[1, 2]).unwrap_err(), IdError::ItemLength(2));
    }

    #[test]
    fn names_and_server_ids_are_checked_once_and_kept_as_text() {
        for good in ["models", "a", "llama-3-70b", &"x".repeat(MAX_FILESET_NAME)] {
            let name: FilesetName = good.parse().unwrap();
            assert_eq!(name.as_str(), good);
            assert_eq!(serde_json::to_string(&name).unwrap(), format!("{good:?}"), "stored as plain text");
        }
        for bad in ["", "-a", "a-", "Models", "a_b", "a.b", &"x".repeat(MAX_FILESET_NAME + 1)] {
            assert_eq!(FilesetName::new(bad).unwrap_err(), IdError::FilesetName(bad.into()), "{bad:?}");
            assert!(serde_json::from_str::<FilesetName>(&format!("{bad:?}")).is_err(), "{bad:?} read back");
        }
        for good in ["cs0", "node-1.zone-a", "10.0.0.7:7100"] {
            assert_eq!(ServerId::new(good).unwrap(), good);
        }
        for bad in ["", "a b", "tab\t", &"x".repeat(MAX_SERVER_ID + 1)] {
            assert!(ServerId::new(bad).is_err(), "{bad:?}");
        }
        let map: std::collections::BTreeMap<FilesetName, u8> = [(FilesetName::new("b").unwrap(), 1)].into();
        assert_eq!(map.get("b"), Some(&1), "looked up by text");
    }
}
