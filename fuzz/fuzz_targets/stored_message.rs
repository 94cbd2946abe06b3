//! A message's stored form, as the store reads it back at start-up: any
//! bytes give a message or an error, never a panic or a stray memory access
//! (cargo fuzz builds with AddressSanitizer, and a message's reader list is
//! unsafe code that decoding builds in place). A decoded message:
//! - encodes to the bytes bincode writes for it, which decode to it again;
//! - lists its reads in ordinal order, each found again by its ordinal.
//!
//! Then reads are folded into it, restored into a group holding every
//! ordinal it names: the reader list grows from whatever was decoded. The
//! result must still encode and decode to itself, and answer its queries.
//!
//! Input: a stored message, then two bytes per read (reader, time).
#![no_main]

use libfuzzer_sys::fuzz_target;
use receiptd_core::{Effects, GroupMeta, Limits, MessageState, MessageTarget, PartitionState, SettingsTable};
use receiptd_wire::{Conversation, Event, GroupType, MessageRead};

/// Groups larger than this are not rebuilt for the fold (the decode checks
/// still run).
const MAX_MEMBERS: u32 = 4_096;

fn decode(bytes: &[u8]) -> Option<(MessageState, usize)> {
    bincode::serde::decode_from_slice(bytes, bincode::config::standard()).ok()
}

fn encode(m: &MessageState) -> Vec<u8> {
    let mut out = Vec::new();
    m.encode_stored(&mut out);
    out
}

/// What decoding promises of `m`.
fn check(m: &MessageState) {
    let bytes = encode(m);
    let serde_bytes = bincode::serde::encode_to_vec(m, bincode::config::standard()).unwrap();
    assert_eq!(bytes, serde_bytes, "staging writes what bincode writes");
    let (back, used) = decode(&bytes).expect("an encoded message decodes");
    assert_eq!(used, bytes.len());
    assert_eq!(encode(&back), bytes, "decoding and encoding again changes nothing");
    let reads: Vec<_> = m.reads().collect();
    assert!(reads.windows(2).all(|w| w[0].ordinal < w[1].ordinal), "reads in ordinal order");
    for r in &reads {
        assert_eq!(m.read_mark(r.ordinal), Some(*r));
    }
    assert_eq!(m.readers.len(), reads.len());
    assert_eq!(m.readers.hidden_count(), reads.iter().filter(|r| r.hidden).count());
}

fuzz_target!(|data: &[u8]| {
    let Some((message, used)) = decode(data) else { return };
    check(&message);

    let MessageTarget::Group { group_id, audience_epoch } = &message.target else { return };
    let members = message.reads().map(|r| r.ordinal + 1).max().unwrap_or(0).max(8);
    if members > MAX_MEMBERS {
        return;
    }
    let (app, msg_id, group_id) = ("a1", "m1", group_id.as_str().to_owned());
    let sent_at = message.sent_at;
    let mut state = PartitionState::new();
    state.restore_group(app, &group_id, GroupMeta { group_type: Some(GroupType::Work), epoch: *audience_epoch });
    for ordinal in 0..members {
        state.restore_member(app, &group_id, ordinal, &format!("u{ordinal}"), 0).expect("slots in order restore");
    }
    state.restore_message(app, msg_id, message, 0);
    if state.finish_restore().is_err() {
        // A message its group refuses (sent at a later epoch, or read by
        // an ordinal it did not hand out): the restored_partition target's
        // concern.
        return;
    }

    let (settings, limits, mut fx) = (SettingsTable::default(), Limits::default(), Effects::default());
    for pair in data[used..].chunks_exact(2) {
        let read_at = match pair[1] >> 6 {
            0 => sent_at.wrapping_add(u64::from(pair[1]) * 1_000),
            1 => sent_at.wrapping_sub(u64::from(pair[1])),
            2 => sent_at.wrapping_add(u64::from(pair[1]) << 30),
            _ => u64::MAX - u64::from(pair[1]),
        };
        let read = Event::MessageRead(MessageRead {
            app_id: app.into(),
            reader: format!("u{}", u32::from(pair[0]) % members).into(),
            conversation: Conversation::Group { group_id: group_id.as_str().into() },
            msg_ids: vec![msg_id.into()],
            read_at,
            private: pair[1] & 1 == 1,
        });
        state.apply(&settings, &limits, &read, 0, &mut fx);
    }
    let _ = state.counts(&settings, app, msg_id);
    if let Some(lists) = state.group_lists(&settings, app, msg_id) {
        let _ = format!("{lists:?}");
    }
    check(&state.message(app, msg_id).unwrap());
});
