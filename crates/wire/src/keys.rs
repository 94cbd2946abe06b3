//! Record keys. Every event of one conversation carries the same key, so it
//! lands in one partition, in order; the fold relies on that.

use crate::{Conversation, Event, Setting};

/// The conversation key an event must carry: C2C `{app}/c2c/{u1}/{u2}` with
/// `u1 < u2` in byte order, group `{app}/group/{group_id}`.
pub fn conversation_key(event: &Event) -> String {
    conversation_key_parts(event).concat()
}

/// Whether `key` is the event's conversation key. Compared piece by piece:
/// the worker checks every record's key, and building the key would cost an
/// allocation (and a formatting pass) per record. A plain loop over the
/// pieces: with iterator adapters (a sum of the lengths, then a zip of
/// 8-byte chunks per piece) the check took 234 instructions a record, 7%
/// of decoding one.
pub fn is_conversation_key(key: &[u8], event: &Event) -> bool {
    let mut rest = key;
    for part in conversation_key_parts(event) {
        let part = part.as_bytes();
        if rest.len() < part.len() || !same_bytes(&rest[..part.len()], part) {
            return false;
        }
        rest = &rest[part.len()..];
    }
    rest.is_empty()
}

/// Whether two byte strings are equal: `a == b`, but up to 16 bytes with at
/// most two loads of 8, 4 or 1 bytes from each (overlapping when shorter
/// than twice the load), never a call to `memcmp`. Ids and key pieces are
/// mostly that short, and `memcmp`'s call and dispatch on the length cost
/// more than the compare: 12% of the decoder's time (key pieces), 8% of
/// the fold's instructions (ids, through `receiptd_core::same_str`).
#[inline]
pub fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    let u64_at = |s: &[u8], at: usize| u64::from_ne_bytes(s[at..at + 8].try_into().expect("8 bytes"));
    let u32_at = |s: &[u8], at: usize| u32::from_ne_bytes(s[at..at + 4].try_into().expect("4 bytes"));
    match n {
        0 => true,
        1..=3 => a[0] == b[0] && a[n / 2] == b[n / 2] && a[n - 1] == b[n - 1],
        4..=7 => u32_at(a, 0) == u32_at(b, 0) && u32_at(a, n - 4) == u32_at(b, n - 4),
        8..=16 => u64_at(a, 0) == u64_at(b, 0) && u64_at(a, n - 8) == u64_at(b, n - 8),
        _ => a == b,
    }
}

/// The conversation key in pieces; concatenated, they are the key.
fn conversation_key_parts(event: &Event) -> [&str; 5] {
    let (app, actor, conversation) = match event {
        Event::GroupMembers(e) => return [&e.app_id, "/group/", &e.group_id, "", ""],
        Event::MessageSent(e) => (&e.app_id, &e.sender, &e.conversation),
        Event::MessageRead(e) => (&e.app_id, &e.reader, &e.conversation),
        Event::ConversationRead(e) => (&e.app_id, &e.reader, &e.conversation),
        Event::MessageRevoked(e) => (&e.app_id, &e.sender, &e.conversation),
    };
    match conversation {
        Conversation::Group { group_id } => [app, "/group/", group_id, "", ""],
        Conversation::C2c { peer } => {
            let (low, high) = if actor.as_bytes() <= peer.as_bytes() { (actor, peer) } else { (peer, actor) };
            [app, "/c2c/", low, "/", high]
        }
    }
}

/// The key of a settings record: `{app}/config` or `{app}/user/{user}`.
pub fn settings_key(setting: &Setting) -> String {
    match setting {
        Setting::AppConfig(c) => format!("{}/config", c.app_id),
        Setting::UserSettings(u) => format!("{}/user/{}", u.app_id, u.user),
    }
}

/// The key of a delta record: `{app}/{recipient}`.
pub fn delta_key(app_id: &str, recipient: &str) -> String {
    let mut key = Vec::with_capacity(app_id.len() + 1 + recipient.len());
    delta_key_into(&mut key, app_id, recipient);
    String::from_utf8(key).expect("two strings and a slash")
}

/// Appends the key of a delta record to `out`: the worker writes one per
/// record into a buffer it reuses, where formatting, or a fresh string per
/// record, cost several times the copy.
pub fn delta_key_into(out: &mut Vec<u8>, app_id: &str, recipient: &str) {
    out.extend_from_slice(app_id.as_bytes());
    out.push(b'/');
    out.extend_from_slice(recipient.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MessageRead;

    fn read(reader: &str, peer: &str) -> Event {
        Event::MessageRead(MessageRead {
            app_id: "a1".into(),
            reader: reader.into(),
            conversation: Conversation::C2c { peer: peer.into() },
            msg_ids: vec!["m".into()],
            read_at: 1,
            private: false,
        })
    }

    #[test]
    fn delta_keys_are_app_slash_recipient() {
        assert_eq!(delta_key("a1", "alice"), "a1/alice");
        let mut out = b"old".to_vec();
        delta_key_into(&mut out, "a1", "bob/x");
        assert_eq!(out, b"olda1/bob/x", "appended");
    }

    #[test]
    fn c2c_key_is_the_same_from_both_sides() {
        assert_eq!(conversation_key(&read("bob", "alice")), "a1/c2c/alice/bob");
        assert_eq!(conversation_key(&read("alice", "bob")), "a1/c2c/alice/bob");
    }

    #[test]
    fn byte_equality_sees_every_byte_and_the_length() {
        for len in 0..40u8 {
            let a: Vec<u8> = (0..len).map(|i| i.wrapping_mul(37)).collect();
            assert!(same_bytes(&a, &a.clone()));
            assert!(!same_bytes(&a, &a[..a.len().saturating_sub(1)]) || a.is_empty());
            for at in 0..a.len() {
                let mut b = a.clone();
                b[at] ^= 0x40;
                assert!(!same_bytes(&a, &b), "a change at {at} of {len} bytes went unseen");
            }
        }
    }

    #[test]
    fn the_piecewise_key_check_accepts_the_key_and_nothing_else() {
        let group = Event::MessageRead(MessageRead {
            app_id: "a1".into(),
            reader: "bob".into(),
            conversation: Conversation::Group { group_id: "g/1".into() },
            msg_ids: vec!["m".into()],
            read_at: 1,
            private: false,
        });
        for event in [read("bob", "alice"), read("alice", "bob"), group] {
            let key = conversation_key(&event);
            assert!(is_conversation_key(key.as_bytes(), &event), "{key}");
            let mut longer = key.clone().into_bytes();
            longer.push(b'x');
            for wrong in [&key.as_bytes()[..key.len() - 1], &longer, b"", b"a1/c2c/bob/alice", b"a1/group/g/2"] {
                assert!(!is_conversation_key(wrong, &event), "{key} accepted {:?}", String::from_utf8_lossy(wrong));
            }
        }
    }
}
