//! Key encoding: partition (u32 BE), kind byte, length-prefixed strings.

use receiptd_core::DirtyKey;

/// The kinds of record in a partition's key range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// The partition's checkpoint.
    Checkpoint = b'c',
    /// A group header.
    Group = b'g',
    /// A group member slot.
    Member = b'u',
    /// A message.
    Message = b'm',
    /// A conversation read mark.
    Mark = b'k',
    /// Held reads.
    Held = b'h',
    /// A page of a message's readers.
    ReaderPage = b'p',
}

pub(crate) enum Parsed<'a> {
    Checkpoint,
    Group { app: &'a str, group: &'a str },
    Member { app: &'a str, group: &'a str, ordinal: u32 },
    Message { app: &'a str, msg: &'a str },
    Mark { app: &'a str, reader: &'a str, peer: &'a str },
    Held { app: &'a str, msg: &'a str },
    ReaderPage { app: &'a str, msg: &'a str, page: u32 },
}

pub(crate) fn partition_prefix(partition: i32) -> Vec<u8> {
    (partition as u32).to_be_bytes().to_vec()
}

pub(crate) fn partition_of(key: &[u8]) -> Option<i32> {
    Some(u32::from_be_bytes(key.get(..4)?.try_into().ok()?) as i32)
}

fn start(partition: i32, kind: Kind) -> Vec<u8> {
    let mut k = Vec::with_capacity(48);
    start_into(&mut k, partition, kind);
    k
}

fn start_into(k: &mut Vec<u8>, partition: i32, kind: Kind) {
    k.clear();
    k.extend_from_slice(&(partition as u32).to_be_bytes());
    k.push(kind as u8);
}

fn push_str(k: &mut Vec<u8>, s: &str) {
    // Ids are validated to at most 128 bytes on the wire.
    debug_assert!(s.len() <= u8::MAX as usize);
    k.push(s.len() as u8);
    k.extend_from_slice(s.as_bytes());
}

pub(crate) fn checkpoint(partition: i32) -> Vec<u8> {
    start(partition, Kind::Checkpoint)
}

#[cfg(test)]
pub(crate) fn entity(partition: i32, key: &DirtyKey) -> Vec<u8> {
    let mut k = Vec::with_capacity(48);
    entity_into(partition, key, &mut k);
    k
}

/// [`entity`] into a buffer the caller reuses: staging writes one key per
/// dirty entity, and an allocation each would cost more than the key.
pub(crate) fn entity_into(partition: i32, key: &DirtyKey, k: &mut Vec<u8>) {
    let kind = match key {
        DirtyKey::Group { .. } => Kind::Group,
        DirtyKey::Member { .. } => Kind::Member,
        DirtyKey::Message { .. } => Kind::Message,
        DirtyKey::Mark { .. } => Kind::Mark,
        DirtyKey::Held { .. } => Kind::Held,
        // Their common prefix: only ever deleted, as a range.
        DirtyKey::ReaderPages { .. } => Kind::ReaderPage,
    };
    start_into(k, partition, kind);
    match key {
        DirtyKey::Group { app, group_id } => {
            push_str(k, app);
            push_str(k, group_id);
        }
        DirtyKey::Member { app, group_id, ordinal } => {
            push_str(k, app);
            push_str(k, group_id);
            k.extend_from_slice(&ordinal.to_be_bytes());
        }
        DirtyKey::Message { app, msg_id } | DirtyKey::Held { app, msg_id } | DirtyKey::ReaderPages { app, msg_id } => {
            push_str(k, app);
            push_str(k, msg_id);
        }
        DirtyKey::Mark { app, reader, peer } => {
            push_str(k, app);
            push_str(k, reader);
            push_str(k, peer);
        }
    }
}

/// `[from, to)` covering every member slot of one group.
pub(crate) fn member_range(partition: i32, app: &str, group: &str) -> (Vec<u8>, Vec<u8>) {
    numbered_range(partition, Kind::Member, app, group)
}

/// `[from, to)` covering every reader page of one message.
pub(crate) fn reader_page_range(partition: i32, app: &str, msg: &str) -> (Vec<u8>, Vec<u8>) {
    numbered_range(partition, Kind::ReaderPage, app, msg)
}

/// `[from, to)` covering every key of `kind` under `app` and `id` that a
/// `u32` (big endian) ends.
fn numbered_range(partition: i32, kind: Kind, app: &str, id: &str) -> (Vec<u8>, Vec<u8>) {
    let mut from = start(partition, kind);
    push_str(&mut from, app);
    push_str(&mut from, id);
    let mut to = from.clone();
    to.extend_from_slice(&[0xff; 5]);
    (from, to)
}

/// The key of page `page` of a message's readers, into `k`.
pub(crate) fn reader_page_into(partition: i32, app: &str, msg: &str, page: u32, k: &mut Vec<u8>) {
    start_into(k, partition, Kind::ReaderPage);
    push_str(k, app);
    push_str(k, msg);
    k.extend_from_slice(&page.to_be_bytes());
}

fn take_str<'a>(rest: &mut &'a [u8]) -> Option<&'a str> {
    let (&len, tail) = rest.split_first()?;
    let len = len as usize;
    if tail.len() < len {
        return None;
    }
    let (s, tail) = tail.split_at(len);
    *rest = tail;
    std::str::from_utf8(s).ok()
}

fn take_u32(rest: &mut &[u8]) -> Option<u32> {
    let n = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?);
    *rest = &rest[4..];
    Some(n)
}

pub(crate) fn parse(key: &[u8]) -> Option<Parsed<'_>> {
    let (&kind, mut rest) = key.get(4..)?.split_first()?;
    const CHECKPOINT: u8 = Kind::Checkpoint as u8;
    const GROUP: u8 = Kind::Group as u8;
    const MEMBER: u8 = Kind::Member as u8;
    const MESSAGE: u8 = Kind::Message as u8;
    const MARK: u8 = Kind::Mark as u8;
    const HELD: u8 = Kind::Held as u8;
    const READER_PAGE: u8 = Kind::ReaderPage as u8;
    let parsed = match kind {
        CHECKPOINT => Parsed::Checkpoint,
        GROUP => Parsed::Group { app: take_str(&mut rest)?, group: take_str(&mut rest)? },
        MEMBER => {
            let (app, group) = (take_str(&mut rest)?, take_str(&mut rest)?);
            Parsed::Member { app, group, ordinal: take_u32(&mut rest)? }
        }
        READER_PAGE => {
            let (app, msg) = (take_str(&mut rest)?, take_str(&mut rest)?);
            Parsed::ReaderPage { app, msg, page: take_u32(&mut rest)? }
        }
        MESSAGE => Parsed::Message { app: take_str(&mut rest)?, msg: take_str(&mut rest)? },
        MARK => Parsed::Mark { app: take_str(&mut rest)?, reader: take_str(&mut rest)?, peer: take_str(&mut rest)? },
        HELD => Parsed::Held { app: take_str(&mut rest)?, msg: take_str(&mut rest)? },
        _ => return None,
    };
    rest.is_empty().then_some(parsed)
}

pub(crate) fn hex(key: &[u8]) -> String {
    key.iter().map(|b| format!("{b:02x}")).collect()
}
