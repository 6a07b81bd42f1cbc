//! How keys and values are packed into nodes. Keys are delta-encoded against
//! the previous key of the same node, so runs of neighbouring keys cost a
//! byte or two each.

use super::Loader;
use crate::error::Result;
use crate::format::{varint::Reader, Kind};
use std::fmt::Debug;

/// Packing rules for one kind of tree.
pub trait Codec: Sized + 'static {
    type Key: Ord + Copy + Debug + Send + Sync;
    type Value: Clone + Debug + Send + Sync;
    /// Block type of this tree's nodes.
    const KIND: Kind;
    /// Upper bound on the encoded bytes of one entry, leaf or internal.
    const MAX_ENTRY: usize;
    /// Lower bound on the encoded bytes of one entry, leaf or internal
    /// (every key and every value or child pointer is at least one varint).
    const MIN_ENTRY: usize = 2;
    fn put_key(prev: Option<&Self::Key>, key: &Self::Key, out: &mut Vec<u8>);
    fn get_key(prev: Option<&Self::Key>, r: &mut Reader) -> Result<Self::Key>;
    fn put_value(prev: Option<&Self::Value>, value: &Self::Value, out: &mut Vec<u8>);
    fn get_value(prev: Option<&Self::Value>, r: &mut Reader) -> Result<Self::Value>;
    /// Whether a decoded leaf value can be used on this device (a pointer
    /// read from disk is bounded before anything follows it).
    fn check_value(_value: &Self::Value, _io: &Loader) -> std::result::Result<(), &'static str> {
        Ok(())
    }
}
