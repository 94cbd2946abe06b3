//! A decoder for the usual shape of an event's JSON, without serde: about a
//! third of the worker's time went to `serde_json` before it (`perf` on the
//! drain bench).
//!
//! It takes a strict subset: one object of the event's known keys, each at
//! most once; strings without escapes or control characters; non-negative
//! integers without sign, fraction or exponent; `true`, `false` and `null`;
//! arrays of such strings; and the `conversation` object with its known
//! keys. It answers `None` to anything else (an unknown key, an escape, a
//! missing field), and the caller then decodes with serde_json. So rare
//! forms and every error decode exactly as before, and whatever this accepts,
//! serde_json accepts as the same event: the property test below and the
//! `decode_json` fuzz target check that.
//!
//! The form serde writes (compact, `type` first, then the event's fields
//! in declared order) is read first, key by key as literals, straight into
//! the event (`Cursor::serde_form`); at the first difference the payload
//! is read again as any object of the known keys (`Cursor::event`).

use crate::event::{ConversationType, EventType, FlatConversation, FlatEvent};
use crate::{
    Conversation, ConversationRead, Event, GroupMembers, GroupType, Id, MembersOp, MessageRead, MessageRevoked,
    MessageSent,
};

/// The event, if the payload has the usual shape.
pub(crate) fn event(payload: &[u8]) -> Option<Event> {
    // UTF-8 is checked string by string (`Cursor::str`): every byte outside
    // a string is matched against ASCII (punctuation, literals, digits,
    // whitespace) or refused, so a payload taken is valid UTF-8 whole.
    let mut cursor = Cursor { bytes: payload, at: 0 };
    let event = match cursor.serde_form() {
        Some(event) => event,
        None => {
            cursor.at = 0;
            cursor.event()?.build().ok()?
        }
    };
    cursor.skip_whitespace();
    (cursor.at == payload.len()).then_some(event)
}

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

/// Bytes that end the plain part of a string: the closing quote, an escape,
/// or a control character (which JSON forbids unescaped).
static STRING_STOP: [bool; 256] = {
    let mut stop = [false; 256];
    let mut c = 0;
    while c < 0x20 {
        stop[c] = true;
        c += 1;
    }
    stop[b'"' as usize] = true;
    stop[b'\\' as usize] = true;
    stop
};

/// Where the plain part of a string ends: the first quote, backslash or
/// control character, looked for eight bytes at a time (the byte-at-a-time
/// scan was a quarter of the decoder's time; ids are mostly 8 to 30 bytes).
/// And whether a byte before it is above ASCII, seen in the same words:
/// the string is then UTF-8 only if checked.
fn string_stop(bytes: &[u8]) -> Option<(usize, bool)> {
    const ONES: u64 = u64::from_ne_bytes([1; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    /// The high bit of every byte below `n` (n ≤ 0x80). Flags above the
    /// lowest true one may be false (borrows), so only the lowest is read.
    fn below(word: u64, n: u8) -> u64 {
        word.wrapping_sub(ONES * u64::from(n)) & !word & HIGHS
    }
    let (mut at, mut high) = (0, 0);
    while let Some(chunk) = bytes.get(at..at + 8) {
        let word = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
        let stops =
            below(word ^ (ONES * u64::from(b'"')), 1) | below(word ^ (ONES * u64::from(b'\\')), 1) | below(word, 0x20);
        if stops != 0 {
            let end = stops.trailing_zeros() as usize / 8;
            // Only the bytes before the stop (the low ones: little-endian).
            high |= word & ((1u64 << (8 * end)) - 1);
            return Some((at + end, high & HIGHS != 0));
        }
        high |= word;
        at += 8;
    }
    let tail = &bytes[at..];
    let end = tail.iter().position(|&c| STRING_STOP[c as usize])?;
    Some((at + end, high & HIGHS != 0 || !tail[..end].is_ascii()))
}

/// Sets a field once; a second occurrence gives up (serde calls it an
/// error, even after a `null`).
fn once<T>(slot: &mut Option<T>, value: Option<T>) -> Option<()> {
    if slot.is_some() {
        return None;
    }
    *slot = Some(value?);
    Some(())
}

impl<'a> Cursor<'a> {
    /// Called before every token, and compact JSON has no whitespace: a
    /// byte above the space settles it with one compare.
    #[inline]
    fn skip_whitespace(&mut self) {
        while let Some(&c) = self.bytes.get(self.at) {
            if c > b' ' || !matches!(c, b' ' | b'\n' | b'\r' | b'\t') {
                return;
            }
            self.at += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_whitespace();
        self.bytes.get(self.at).copied()
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        (self.peek()? == byte).then(|| self.at += 1)
    }

    fn str(&mut self) -> Option<&'a str> {
        self.expect(b'"')?;
        let start = self.at;
        let (len, above_ascii) = string_stop(&self.bytes[start..])?;
        let end = start + len;
        if self.bytes[end] != b'"' {
            return None;
        }
        self.at = end + 1;
        let text = &self.bytes[start..end];
        // Ids are ASCII as a rule, seen so in the scan for the string's
        // end; validating the whole payload as UTF-8 first was 4.5% of the
        // decoder's instructions.
        if above_ascii {
            std::str::from_utf8(text).ok()
        } else {
            // SAFETY: ASCII is UTF-8.
            Some(unsafe { std::str::from_utf8_unchecked(text) })
        }
    }

    /// A string as an [`Id`]: an id short enough sits inline, with no
    /// allocation (a read's ids were four of its five allocations).
    fn string(&mut self) -> Option<Id> {
        self.str().map(Id::from)
    }

    fn u64(&mut self) -> Option<u64> {
        self.skip_whitespace();
        let rest = &self.bytes[self.at..];
        // One pass, unchecked: 19 digits cannot overflow, and only 20 are
        // checked again (a checked fold over an iterator of the digits
        // cost 200 instructions a timestamp).
        let (mut value, mut digits) = (0u64, 0);
        while let Some(digit) = rest.get(digits).map(|c| c.wrapping_sub(b'0')).filter(|&d| d <= 9) {
            value = value.wrapping_mul(10).wrapping_add(u64::from(digit));
            digits += 1;
        }
        // A leading zero, a fraction, an exponent or an overflow is for
        // serde to judge.
        if digits == 0 || digits > 20 || (digits > 1 && rest[0] == b'0') {
            return None;
        }
        if let Some(b'.' | b'e' | b'E') = rest.get(digits) {
            return None;
        }
        if digits == 20 {
            value = rest[..20].iter().try_fold(0u64, |n, &d| n.checked_mul(10)?.checked_add(u64::from(d - b'0')))?;
        }
        self.at += digits;
        Some(value)
    }

    /// `null` (as serde reads it into an `Option`: `None`) or a value.
    fn or_null<T>(&mut self, value: impl FnOnce(&mut Self) -> Option<T>) -> Option<Option<T>> {
        self.skip_whitespace();
        if self.bytes[self.at..].starts_with(b"null") {
            self.at += 4;
            return Some(None);
        }
        value(self).map(Some)
    }

    fn bool(&mut self) -> Option<bool> {
        self.skip_whitespace();
        let rest = &self.bytes[self.at..];
        let (value, len) = if rest.starts_with(b"true") {
            (true, 4)
        } else if rest.starts_with(b"false") {
            (false, 5)
        } else {
            return None;
        };
        self.at += len;
        Some(value)
    }

    fn strings(&mut self) -> Option<Vec<Id>> {
        self.expect(b'[')?;
        if self.peek()? == b']' {
            self.at += 1;
            return Some(Vec::new());
        }
        // Most lists are one message id: allocate for one, not through the
        // growth path (which starts at four).
        let mut all = Vec::with_capacity(1);
        loop {
            all.push(self.string()?);
            match self.peek()? {
                b',' => {
                    self.at += 1;
                    if all.len() == 1 {
                        // More than one: room for 16 at once, where growth
                        // went 1, 4, 8, 16 for a client's read of ten.
                        all.reserve_exact(15);
                    }
                }
                b']' => {
                    self.at += 1;
                    return Some(all);
                }
                _ => return None,
            }
        }
    }

    /// An object, handing the cursor to `member` at each member, which reads
    /// its key and value.
    fn members(&mut self, mut member: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        self.expect(b'{')?;
        if self.peek()? == b'}' {
            self.at += 1;
            return Some(());
        }
        loop {
            member(self)?;
            match self.peek()? {
                b',' => self.at += 1,
                b'}' => {
                    self.at += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// An object, handing each key to `field`, which reads the value.
    fn object(&mut self, mut field: impl FnMut(&'a str, &mut Self) -> Option<()>) -> Option<()> {
        self.members(|c| {
            let key = c.str()?;
            c.expect(b':')?;
            field(key, c)
        })
    }

    /// `literal` at the cursor (after any whitespace), taken if there.
    #[inline]
    fn literal<const N: usize>(&mut self, literal: &[u8; N]) -> bool {
        self.skip_whitespace();
        let there = self.bytes.get(self.at..self.at + N).is_some_and(|b| b == literal);
        if there {
            self.at += N;
        }
        there
    }

    fn event(&mut self) -> Option<FlatEvent> {
        let (mut kind, mut app_id, mut group_id, mut op, mut group_type_, mut members) =
            (None, None, None, None, None, None);
        let (mut msg_id, mut sender, mut conversation, mut need_read_receipt, mut sent_at) =
            (None, None, None, None, None);
        let (mut reader, mut msg_ids, mut read_at, mut private, mut at) = (None, None, None, None, None);
        self.object(|key, c| {
            // Every field but `type` is optional: `null` reads as absent.
            match event_field(key)? {
                EventField::Type => once(&mut kind, c.str().and_then(event_type)),
                EventField::AppId => once(&mut app_id, c.or_null(Self::string)),
                EventField::GroupId => once(&mut group_id, c.or_null(Self::string)),
                EventField::Op => once(&mut op, c.or_null(|c| c.str().and_then(members_op))),
                EventField::GroupType => once(&mut group_type_, c.or_null(|c| c.str().and_then(group_type))),
                EventField::Members => once(&mut members, c.or_null(Self::strings)),
                EventField::MsgId => once(&mut msg_id, c.or_null(Self::string)),
                EventField::Sender => once(&mut sender, c.or_null(Self::string)),
                EventField::Conversation => once(&mut conversation, c.or_null(Self::conversation)),
                EventField::NeedReadReceipt => once(&mut need_read_receipt, c.or_null(Self::bool)),
                EventField::SentAt => once(&mut sent_at, c.or_null(Self::u64)),
                EventField::Reader => once(&mut reader, c.or_null(Self::string)),
                EventField::MsgIds => once(&mut msg_ids, c.or_null(Self::strings)),
                EventField::ReadAt => once(&mut read_at, c.or_null(Self::u64)),
                EventField::Private => once(&mut private, c.or_null(Self::bool)),
                EventField::At => once(&mut at, c.or_null(Self::u64)),
            }
        })?;
        Some(FlatEvent {
            kind: kind?,
            app_id: app_id.flatten(),
            group_id: group_id.flatten(),
            op: op.flatten(),
            group_type: group_type_.flatten(),
            members: members.flatten(),
            msg_id: msg_id.flatten(),
            sender: sender.flatten(),
            conversation: conversation.flatten(),
            need_read_receipt: need_read_receipt.flatten(),
            sent_at: sent_at.flatten(),
            reader: reader.flatten(),
            msg_ids: msg_ids.flatten(),
            read_at: read_at.flatten(),
            private: private.flatten(),
            at: at.flatten(),
        })
    }

    /// The event in exactly the form serde writes it: `type` first, then
    /// every field in declared order, each key one literal and each value
    /// read straight into the event, with no `null`. `None` at the first
    /// difference, and the caller reads the payload again as any object
    /// (`event`). Most records are in this form, and reading it so skips a
    /// flat event of every field (moved twice), a dispatch per key, and a
    /// check per field that it came once.
    fn serde_form(&mut self) -> Option<Event> {
        // Each kind with the object's start in one literal: a literal may
        // follow whitespace, and the kind is inside a string, where a space
        // is part of the name (`" message_read"` is no kind).
        let event = if self.literal(b"{\"type\":\"message_read\",\"app_id\":") {
            let (app_id, reader, conversation) = self.reader_fields()?;
            Event::MessageRead(MessageRead {
                app_id,
                reader,
                conversation,
                msg_ids: self.field(b",\"msg_ids\":", Self::strings)?,
                read_at: self.field(b",\"read_at\":", Self::u64)?,
                private: self.field(b",\"private\":", Self::bool)?,
            })
        } else if self.literal(b"{\"type\":\"message_sent\",\"app_id\":") {
            let (app_id, msg_id, sender, conversation) = self.sender_fields()?;
            Event::MessageSent(MessageSent {
                app_id,
                msg_id,
                sender,
                conversation,
                need_read_receipt: self.field(b",\"need_read_receipt\":", Self::bool)?,
                sent_at: self.field(b",\"sent_at\":", Self::u64)?,
            })
        } else if self.literal(b"{\"type\":\"group_members\",\"app_id\":") {
            Event::GroupMembers(GroupMembers {
                app_id: self.string()?,
                group_id: self.field(b",\"group_id\":", Self::string)?,
                op: self.field(b",\"op\":", |c| c.str().and_then(members_op))?,
                group_type: self.field(b",\"group_type\":", |c| c.or_null(|c| c.str().and_then(group_type)))?,
                members: self.field(b",\"members\":", Self::strings)?,
                at: self.field(b",\"at\":", Self::u64)?,
            })
        } else if self.literal(b"{\"type\":\"conversation_read\",\"app_id\":") {
            let (app_id, reader, conversation) = self.reader_fields()?;
            Event::ConversationRead(ConversationRead {
                app_id,
                reader,
                conversation,
                read_at: self.field(b",\"read_at\":", Self::u64)?,
            })
        } else if self.literal(b"{\"type\":\"message_revoked\",\"app_id\":") {
            let (app_id, msg_id, sender, conversation) = self.sender_fields()?;
            Event::MessageRevoked(MessageRevoked {
                app_id,
                msg_id,
                sender,
                conversation,
                at: self.field(b",\"at\":", Self::u64)?,
            })
        } else {
            return None;
        };
        self.literal(b"}").then_some(event)
    }

    /// The fields a read event opens with, in the serde form: the app's
    /// value, then the reader and the conversation. Inlined, as
    /// `sender_fields` is: returned through memory, the tuple cost 36
    /// instructions a record.
    #[inline(always)]
    fn reader_fields(&mut self) -> Option<(Id, Id, Conversation)> {
        let app_id = self.string()?;
        let reader = self.field(b",\"reader\":", Self::string)?;
        Some((app_id, reader, self.field(b",\"conversation\":", Self::usual_conversation)?))
    }

    /// The fields a sent or revoked message opens with, in the serde form:
    /// the app's value, then the message, its sender and the conversation.
    #[inline(always)]
    fn sender_fields(&mut self) -> Option<(Id, Id, Id, Conversation)> {
        let app_id = self.string()?;
        let msg_id = self.field(b",\"msg_id\":", Self::string)?;
        let sender = self.field(b",\"sender\":", Self::string)?;
        Some((app_id, msg_id, sender, self.field(b",\"conversation\":", Self::usual_conversation)?))
    }

    /// The separator and key `key` (one literal), then its value.
    #[inline]
    fn field<const N: usize, T>(&mut self, key: &[u8; N], value: impl FnOnce(&mut Self) -> Option<T>) -> Option<T> {
        if self.literal(key) {
            value(self)
        } else {
            None
        }
    }

    /// A conversation in the form serde writes it, `{"type":"group",
    /// "group_id":...}` or `{"type":"c2c","peer":...}`, its keys and type
    /// one literal; `None` for any other form, which `conversation` then
    /// reads as any object.
    fn usual_conversation(&mut self) -> Option<Conversation> {
        let conversation = if self.literal(b"{\"type\":\"group\",\"group_id\":") {
            Conversation::Group { group_id: self.string()? }
        } else if self.literal(b"{\"type\":\"c2c\",\"peer\":") {
            Conversation::C2c { peer: self.string()? }
        } else {
            return None;
        };
        self.literal(b"}").then_some(conversation)
    }

    fn conversation(&mut self) -> Option<Conversation> {
        let start = self.at;
        if let Some(conversation) = self.usual_conversation() {
            return Some(conversation);
        }
        self.at = start;
        let (mut kind, mut peer, mut group_id) = (None, None, None);
        self.object(|key, c| match key.len() {
            4 if is(key, b"type") => once(&mut kind, c.str().and_then(conversation_type)),
            4 if is(key, b"peer") => once(&mut peer, c.or_null(Self::string)),
            8 if is(key, b"group_id") => once(&mut group_id, c.or_null(Self::string)),
            _ => None,
        })?;
        FlatConversation { kind: kind?, peer: peer.flatten(), group_id: group_id.flatten() }
            .build()
            .ok()
            .map(Conversation::from)
    }
}

/// Whether `name` is `candidate`: a compare of fixed size, which compiles
/// to a few integer compares where a `match` on strings calls `memcmp` once
/// per arm (13% of the decoder's time, the field names alone).
fn is<const N: usize>(name: &str, candidate: &[u8; N]) -> bool {
    <&[u8; N]>::try_from(name.as_bytes()).is_ok_and(|name| name == candidate)
}

/// The keys of an event object.
#[derive(Debug)]
enum EventField {
    Type,
    AppId,
    GroupId,
    Op,
    GroupType,
    Members,
    MsgId,
    Sender,
    Conversation,
    NeedReadReceipt,
    SentAt,
    Reader,
    MsgIds,
    ReadAt,
    Private,
    At,
}

fn event_field(name: &str) -> Option<EventField> {
    use EventField::*;
    // The length picks the arm; at most four names share one.
    Some(match name.len() {
        2 if is(name, b"op") => Op,
        2 if is(name, b"at") => At,
        4 if is(name, b"type") => Type,
        6 if is(name, b"app_id") => AppId,
        6 if is(name, b"msg_id") => MsgId,
        6 if is(name, b"reader") => Reader,
        6 if is(name, b"sender") => Sender,
        7 if is(name, b"read_at") => ReadAt,
        7 if is(name, b"msg_ids") => MsgIds,
        7 if is(name, b"sent_at") => SentAt,
        7 if is(name, b"members") => Members,
        7 if is(name, b"private") => Private,
        8 if is(name, b"group_id") => GroupId,
        10 if is(name, b"group_type") => GroupType,
        12 if is(name, b"conversation") => Conversation,
        17 if is(name, b"need_read_receipt") => NeedReadReceipt,
        _ => return None,
    })
}

fn event_type(name: &str) -> Option<EventType> {
    Some(match name.len() {
        12 if is(name, b"message_read") => EventType::MessageRead,
        12 if is(name, b"message_sent") => EventType::MessageSent,
        13 if is(name, b"group_members") => EventType::GroupMembers,
        15 if is(name, b"message_revoked") => EventType::MessageRevoked,
        17 if is(name, b"conversation_read") => EventType::ConversationRead,
        _ => return None,
    })
}

fn conversation_type(name: &str) -> Option<ConversationType> {
    Some(match name.len() {
        3 if is(name, b"c2c") => ConversationType::C2c,
        5 if is(name, b"group") => ConversationType::Group,
        _ => return None,
    })
}

fn members_op(name: &str) -> Option<MembersOp> {
    Some(match name {
        "snapshot" => MembersOp::Snapshot,
        "join" => MembersOp::Join,
        "leave" => MembersOp::Leave,
        "dismiss" => MembersOp::Dismiss,
        _ => return None,
    })
}

fn group_type(name: &str) -> Option<GroupType> {
    [GroupType::Work, GroupType::Public, GroupType::Meeting, GroupType::Community, GroupType::AVChatRoom]
        .into_iter()
        .find(|t| t.as_str() == name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What serde_json makes of the payload: the reference.
    fn reference(payload: &[u8]) -> Option<Event> {
        serde_json::from_slice(payload).ok()
    }

    /// The property: whatever the fast path accepts, serde accepts as the
    /// same event.
    fn agrees(payload: &[u8]) -> Result<bool, TestCaseError> {
        match event(payload) {
            Some(fast) => {
                prop_assert_eq!(reference(payload), Some(fast), "{}", String::from_utf8_lossy(payload));
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// The form `serde_form` reads is the one serde writes, for every kind
    /// of event: each is taken there, and agrees with serde.
    #[test]
    fn the_serde_form_is_what_serde_writes() {
        let events = [
            r#"{"type":"group_members","app_id":"a","group_id":"g","op":"snapshot","group_type":"Work","members":["u"],"at":1}"#,
            r#"{"type":"group_members","app_id":"a","group_id":"g","op":"dismiss","group_type":null,"members":[],"at":1}"#,
            r#"{"type":"message_sent","app_id":"a","msg_id":"m","sender":"u","conversation":{"type":"group","group_id":"g"},"need_read_receipt":true,"sent_at":1}"#,
            r#"{"type":"message_read","app_id":"a","reader":"u","conversation":{"type":"c2c","peer":"v"},"msg_ids":["m"],"read_at":1,"private":false}"#,
            r#"{"type":"conversation_read","app_id":"a","reader":"u","conversation":{"type":"c2c","peer":"v"},"read_at":1}"#,
            r#"{"type":"message_revoked","app_id":"a","msg_id":"m","sender":"u","conversation":{"type":"group","group_id":"g"},"at":1}"#,
        ];
        for json in events {
            let event = reference(json.as_bytes()).expect("a valid event");
            // serde writes it back byte for byte, so this is its form.
            assert_eq!(serde_json::to_string(&event).unwrap(), json);
            let mut cursor = Cursor { bytes: json.as_bytes(), at: 0 };
            assert_eq!(cursor.serde_form(), Some(event), "{json}");
            assert_eq!(cursor.at, json.len(), "{json}");
        }
    }

    /// Another order, a `null` or an absent default is not the serde form,
    /// and is read as any object is.
    #[test]
    fn other_forms_are_read_as_any_object() {
        let events = [
            r#"{ "type":"message_read","app_id":"a","reader":"u","conversation":{"type":"c2c","peer":"v"},"msg_ids":["m"],"read_at":1,"private":false}"#,
            r#"{"app_id":"a","type":"message_read","reader":"u","conversation":{"type":"c2c","peer":"v"},"msg_ids":["m"],"read_at":1,"private":false}"#,
            r#"{"type":"message_read","app_id":"a","reader":"u","conversation":{"type":"c2c","peer":"v"},"msg_ids":["m"],"read_at":1,"private":null}"#,
            r#"{"type":"message_read","app_id":"a","reader":"u","conversation":{"type":"c2c","peer":"v"},"msg_ids":["m"],"read_at":1}"#,
            r#"{"type":"message_sent","app_id":"a","msg_id":"m","sender":"u","conversation":{"group_id":"g","type":"group"},"sent_at":1}"#,
        ];
        for json in events {
            let mut cursor = Cursor { bytes: json.as_bytes(), at: 0 };
            assert_eq!(cursor.serde_form(), None, "{json}");
            assert_eq!(event(json.as_bytes()), Some(reference(json.as_bytes()).expect("a valid event")), "{json}");
        }
    }

    /// Integers at every length up to and past u64's, and the forms left
    /// to serde: the fast path takes exactly what serde reads as a u64.
    /// A space inside the kind's string is part of the name, not
    /// whitespace between tokens: no such kind, for serde and here.
    #[test]
    fn a_kind_with_a_space_in_it_is_no_kind() {
        for kind in ["message_read", "message_sent", "group_members", "conversation_read", "message_revoked"] {
            let json = format!(
                r#"{{"type":" {kind}","app_id":"a","reader":"u","conversation":{{"type":"c2c","peer":"v"}},"read_at":1}}"#
            );
            assert_eq!(reference(json.as_bytes()), None, "{json}");
            assert_eq!(event(json.as_bytes()), None, "{json}");
        }
    }

    #[test]
    fn integers_are_read_as_serde_reads_them() {
        let mut numbers: Vec<String> =
            ["0", "7", "01", "00", "1.5", "1e3", "1E3", "", "-1", "18446744073709551615"].map(String::from).into();
        numbers.extend(["18446744073709551616", "99999999999999999999", "100000000000000000000"].map(String::from));
        // Each length, all nines and a one followed by zeros.
        for len in 1..=21 {
            numbers.push("9".repeat(len));
            numbers.push(format!("1{}", "0".repeat(len - 1)));
        }
        for number in numbers {
            let json = format!("{number},");
            let mut cursor = Cursor { bytes: json.as_bytes(), at: 0 };
            let fast = cursor.u64();
            let serde = serde_json::from_str::<u64>(&number).ok();
            match fast {
                Some(value) => {
                    assert_eq!(Some(value), serde, "{number}");
                    assert_eq!(cursor.at, number.len(), "{number}");
                }
                // Refused: serde refuses it too, or reads it otherwise
                // than as a plain integer (none such here but `1e3`'s kin,
                // which serde refuses as a u64 too).
                None => assert_eq!(serde, None, "{number}: serde reads it, the fast path refused it"),
            }
        }
    }

    #[test]
    fn agrees_with_serde_on_the_fuzz_corpus() {
        // The directory cargo runs the test from, not the one it was built
        // in: a target dir shared with another checkout may hold a binary
        // built there.
        let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").expect("run by cargo test");
        let dir = format!("{manifest_dir}/../../fuzz/corpus/decode_json");
        let (mut inputs, mut accepted) = (0, 0);
        for entry in std::fs::read_dir(&dir).expect("the decode_json corpus is committed") {
            let data = std::fs::read(entry.unwrap().path()).unwrap();
            // As in the fuzz target: the first line is the key.
            let payload = data.iter().position(|&b| b == b'\n').map_or(&data[..], |i| &data[i + 1..]);
            inputs += 1;
            accepted += u32::from(agrees(payload).unwrap());
        }
        assert!(inputs > 1_000, "{inputs} corpus inputs");
        assert!(accepted > 0, "the fast path took none of {inputs} corpus inputs");
    }

    #[test]
    fn ids_above_ascii_are_taken_if_utf8_and_left_to_serde_if_not() {
        let read = |reader: &[u8]| {
            let mut json = br#"{"type":"message_read","app_id":"a","reader":""#.to_vec();
            json.extend_from_slice(reader);
            json.extend_from_slice(br#"","conversation":{"type":"c2c","peer":"v"},"msg_ids":["m"],"read_at":1}"#);
            json
        };
        // Long and short, so that the bytes above ASCII fall in the word
        // scan and in its tail.
        for name in ["é", "ünïcødé-user-with-a-long-name", "😀"] {
            let json = read(name.as_bytes());
            let fast = event(&json).expect("valid UTF-8: the fast path takes it");
            assert_eq!(Some(fast), reference(&json));
        }
        for bad in [&b"\xff"[..], b"user-\xc3", b"a-long-user-name-\xe2\x82"] {
            assert_eq!(event(&read(bad)), None, "{bad:?}: not UTF-8, left to serde");
            assert!(reference(&read(bad)).is_none(), "{bad:?}: and serde refuses it");
        }
    }

    /// The byte-at-a-time scan the word scan replaced, and a check for
    /// bytes above ASCII before the stop: the reference.
    fn string_stop_bytewise(bytes: &[u8]) -> Option<(usize, bool)> {
        let end = bytes.iter().position(|&c| STRING_STOP[c as usize])?;
        Some((end, bytes[..end].iter().any(|&c| c >= 0x80)))
    }

    #[test]
    fn the_word_scan_finds_the_first_stop_byte_wherever_it_is() {
        // Every stop byte, and the bytes next to them, at every position of
        // three words, after plain bytes of every class.
        let stops = [b'"', b'\\', 0x00, 0x1f, b'\n'];
        let plain = [b'a', b' ', b'!', b'#', b'[', b']', 0x20, 0x7f, 0x80, 0xc3, 0xff];
        for len in 0..24 {
            for &filler in &plain {
                let mut bytes = vec![filler; len];
                assert_eq!(string_stop(&bytes), None, "{bytes:?}");
                for at in 0..len {
                    for &stop in &stops {
                        bytes[at] = stop;
                        // A later stop must not hide the first.
                        if at + 3 < len {
                            bytes[at + 3] = b'"';
                        }
                        // Bytes above ASCII count before the stop only.
                        assert_eq!(string_stop(&bytes), Some((at, at > 0 && filler >= 0x80)), "{bytes:?}");
                        bytes.iter_mut().for_each(|b| *b = filler);
                    }
                }
            }
        }
    }

    proptest! {
        #[test]
        fn the_word_scan_agrees_with_the_byte_scan(bytes in prop::collection::vec(any::<u8>(), 0..40)) {
            prop_assert_eq!(string_stop(&bytes), string_stop_bytewise(&bytes));
        }

    }

    #[test]
    fn field_names_are_recognized_exactly() {
        let names = [
            "type",
            "app_id",
            "group_id",
            "op",
            "group_type",
            "members",
            "msg_id",
            "sender",
            "conversation",
            "need_read_receipt",
            "sent_at",
            "reader",
            "msg_ids",
            "read_at",
            "private",
            "at",
        ];
        let fields: std::collections::BTreeSet<_> =
            names.iter().map(|n| event_field(n).map(|f| f as u8).expect(n)).collect();
        assert_eq!(fields.len(), names.len(), "each name has a field of its own");
        // Near misses: one byte changed, one short, one long.
        for name in names {
            let mut near = vec![format!("{name}x"), name[..name.len() - 1].to_owned(), name.to_uppercase()];
            near.extend((0..name.len()).map(|i| format!("{}#{}", &name[..i], &name[i + 1..])));
            for miss in near.iter().filter(|m| !names.contains(&m.as_str())) {
                assert!(event_field(miss).is_none(), "{miss:?} taken for a field name");
            }
        }
    }

    fn id() -> impl Strategy<Value = Id> {
        // Mostly plain ids, short (inline) and long (shared), sometimes
        // quotes, backslashes, control and non-ASCII characters (which the
        // fast path leaves to serde).
        prop_oneof![4 => "[a-z0-9_./-]{1,30}", 1 => "\\PC{0,6}", 1 => "[\"\\\\\u{1}é😀a]{1,4}"].prop_map(Id::from)
    }

    fn conversation() -> impl Strategy<Value = Conversation> {
        prop_oneof![
            id().prop_map(|peer| Conversation::C2c { peer }),
            id().prop_map(|group_id| Conversation::Group { group_id }),
        ]
    }

    fn any_event() -> impl Strategy<Value = Event> {
        let op = prop_oneof![Just(MembersOp::Snapshot), Just(MembersOp::Join), Just(MembersOp::Leave)];
        let group_type = prop::option::of(prop_oneof![Just(GroupType::Work), Just(GroupType::AVChatRoom)]);
        prop_oneof![
            (id(), id(), op, group_type, prop::collection::vec(id(), 0..4), any::<u64>()).prop_map(
                |(app_id, group_id, op, group_type, members, at)| {
                    Event::GroupMembers(GroupMembers { app_id, group_id, op, group_type, members, at })
                }
            ),
            (id(), id(), id(), conversation(), any::<bool>(), any::<u64>()).prop_map(
                |(app_id, msg_id, sender, conversation, need_read_receipt, sent_at)| {
                    Event::MessageSent(MessageSent { app_id, msg_id, sender, conversation, need_read_receipt, sent_at })
                }
            ),
            (id(), id(), conversation(), prop::collection::vec(id(), 0..4), any::<u64>(), any::<bool>()).prop_map(
                |(app_id, reader, conversation, msg_ids, read_at, private)| {
                    Event::MessageRead(MessageRead { app_id, reader, conversation, msg_ids, read_at, private })
                }
            ),
            (id(), id(), conversation(), any::<u64>()).prop_map(|(app_id, reader, conversation, read_at)| {
                Event::ConversationRead(ConversationRead { app_id, reader, conversation, read_at })
            }),
            (id(), id(), id(), conversation(), any::<u64>()).prop_map(|(app_id, msg_id, sender, conversation, at)| {
                Event::MessageRevoked(MessageRevoked { app_id, msg_id, sender, conversation, at })
            }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        /// Events as serde writes them: compact, pretty, or with their keys
        /// sorted (through `serde_json::Value`, whose objects are sorted
        /// maps), so that the serde form is met and missed. The fast path
        /// gives the same event, and takes every one without escapes; the
        /// compact ones in the serde form.
        #[test]
        fn decodes_what_serde_writes(e in any_event(), form in 0u8..3) {
            let json = match form {
                0 => serde_json::to_vec(&e),
                1 => serde_json::to_vec_pretty(&e),
                _ => serde_json::to_vec(&serde_json::to_value(&e).unwrap()),
            }
            .unwrap();
            let took = agrees(&json)?;
            let plain = !json.contains(&b'\\') && !json.iter().any(|&c| c < 0x20 && !b" \n\r\t".contains(&c));
            prop_assert!(took || !plain, "the fast path refused a plain event: {}", String::from_utf8_lossy(&json));
            if form == 0 && plain {
                let mut cursor = Cursor { bytes: &json, at: 0 };
                prop_assert!(cursor.serde_form().is_some(), "not read in the serde form: {}", String::from_utf8_lossy(&json));
            }
        }

        /// Serialized events with bytes replaced, inserted or removed: the
        /// fast path never accepts what serde decodes otherwise or refuses.
        #[test]
        fn never_disagrees_on_damaged_json(
            e in any_event(),
            edits in prop::collection::vec((any::<prop::sample::Index>(), 0u8..3, any::<u8>()), 1..4),
        ) {
            let mut json = serde_json::to_vec(&e).unwrap();
            for (at, how, byte) in edits {
                let i = at.index(json.len() + 1);
                match how {
                    0 if i < json.len() => json[i] = byte,
                    1 => json.insert(i, byte),
                    _ if i < json.len() => { json.remove(i); }
                    _ => {}
                }
            }
            agrees(&json)?;
        }
    }
}
