//! Identifiers of the things the data plane stores.
//!
//! An item is identified by 128 random bits; a stripe by its item and its index
//! (0..k are data, k..n parity). Their text form is what logs, metrics and file
//! names use, so one grep follows a stripe from the writer to the disk.

use std::fmt;
use std::str::FromStr;

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

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("an item id is 16 bytes, got {0}")]
    ItemLength(usize),
    #[error("{0:?} is not an item id (32 hex digits)")]
    ItemText(String),
    #[error("{0:?} is not a stripe id (ITEM.INDEX)")]
    StripeText(String),
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
}
