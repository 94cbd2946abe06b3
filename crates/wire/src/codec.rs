//! Record bytes to contract types, with validation and stable reason codes.

use crate::{
    conversation_key, is_conversation_key, settings_key, Conversation, Event, MembersOp, Setting, MAX_ID_BYTES,
    MAX_MEMBERS_PER_EVENT, MAX_MSG_IDS_PER_READ, MAX_RECORD_BYTES,
};

/// The record header that selects the encoding.
pub const CONTENT_TYPE_HEADER: &str = "content-type";
/// The header value that selects bincode.
pub const BINCODE_CONTENT_TYPE: &str = "application/bincode";

/// Bound on what bincode may allocate while decoding one record.
const BINCODE_LIMIT: usize = 2 * MAX_RECORD_BYTES;

/// How a record's payload is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentType {
    /// JSON, UTF-8 (the default).
    Json,
    /// bincode 2, serde, standard config.
    Bincode,
}

impl ContentType {
    /// From the `content-type` header value; no header means JSON.
    pub fn from_header(value: Option<&[u8]>) -> Result<Self, DecodeError> {
        match value {
            None => Ok(ContentType::Json),
            Some(v) => {
                let v = std::str::from_utf8(v).unwrap_or("").trim();
                let essence = v.split(';').next().unwrap_or("").trim();
                if essence.eq_ignore_ascii_case(BINCODE_CONTENT_TYPE) {
                    Ok(ContentType::Bincode)
                } else if essence.eq_ignore_ascii_case("application/json") || essence.is_empty() {
                    Ok(ContentType::Json)
                } else {
                    Err(DecodeError::UnsupportedContentType(v.chars().take(64).collect()))
                }
            }
        }
    }
}

/// Why a record could not be applied. [`DecodeError::reason`] is the stable
/// code written to the DLQ header and the metric label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The record has no payload.
    #[error("record has no payload")]
    EmptyPayload,
    /// The payload is larger than the decoder accepts.
    #[error("payload of {0} bytes exceeds the limit of {MAX_RECORD_BYTES} bytes")]
    TooLarge(usize),
    /// The `content-type` header names an encoding we do not read.
    #[error("unsupported content-type {0:?}")]
    UnsupportedContentType(String),
    /// The payload is not a valid event in its encoding.
    #[error("malformed payload: {0}")]
    Malformed(String),
    /// The payload decodes but a field breaks a rule of the contract.
    #[error("invalid field `{field}`: {problem}")]
    InvalidField {
        /// The field's name.
        field: &'static str,
        /// What is wrong with it.
        problem: String,
    },
    /// The record's key is not the one its payload implies.
    #[error("record key {actual:?} does not match payload key {expected:?}")]
    KeyMismatch {
        /// The key the payload implies.
        expected: String,
        /// The key the record carries (lossy UTF-8, truncated).
        actual: String,
    },
}

impl DecodeError {
    /// Stable reason code (DLQ header value, metric label).
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::EmptyPayload => "empty_payload",
            DecodeError::TooLarge(_) => "too_large",
            DecodeError::UnsupportedContentType(_) => "unsupported_content_type",
            DecodeError::Malformed(_) => "malformed",
            DecodeError::InvalidField { .. } => "invalid_field",
            DecodeError::KeyMismatch { .. } => "key_mismatch",
        }
    }
}

fn decode_bytes<T: serde::de::DeserializeOwned>(
    payload: Option<&[u8]>,
    content_type: ContentType,
) -> Result<T, DecodeError> {
    let payload = match payload {
        None | Some([]) => return Err(DecodeError::EmptyPayload),
        Some(p) => p,
    };
    if payload.len() > MAX_RECORD_BYTES {
        return Err(DecodeError::TooLarge(payload.len()));
    }
    match content_type {
        ContentType::Json => serde_json::from_slice(payload).map_err(|e| DecodeError::Malformed(e.to_string())),
        ContentType::Bincode => {
            let config = bincode::config::standard().with_limit::<BINCODE_LIMIT>();
            let (value, used) = bincode::serde::decode_from_slice(payload, config)
                .map_err(|e| DecodeError::Malformed(e.to_string()))?;
            if used != payload.len() {
                return Err(DecodeError::Malformed(format!("{} trailing bytes after the event", payload.len() - used)));
            }
            Ok(value)
        }
    }
}

fn check_key(key: Option<&[u8]>, expected: String) -> Result<(), DecodeError> {
    if key == Some(expected.as_bytes()) {
        return Ok(());
    }
    Err(key_mismatch(key, expected))
}

fn key_mismatch(key: Option<&[u8]>, expected: String) -> DecodeError {
    let actual = match key {
        None => "<none>".to_owned(),
        Some(k) => String::from_utf8_lossy(&k[..k.len().min(300)]).into_owned(),
    };
    DecodeError::KeyMismatch { expected, actual }
}

/// Decodes and validates one `receipts.events` record.
pub fn decode_event(
    key: Option<&[u8]>,
    payload: Option<&[u8]>,
    content_type: ContentType,
) -> Result<Event, DecodeError> {
    decode_event_with(key, payload, content_type, true)
}

/// [`decode_event`] through serde_json alone, without the fast path for the
/// usual JSON shape: the reference that path is checked against (unit tests
/// and the `decode_json` fuzz target).
#[doc(hidden)]
pub fn decode_event_reference(
    key: Option<&[u8]>,
    payload: Option<&[u8]>,
    content_type: ContentType,
) -> Result<Event, DecodeError> {
    decode_event_with(key, payload, content_type, false)
}

fn decode_event_with(
    key: Option<&[u8]>,
    payload: Option<&[u8]>,
    content_type: ContentType,
    fast_path: bool,
) -> Result<Event, DecodeError> {
    // The usual JSON shape without serde; anything else (errors included)
    // through serde, so both decode alike.
    let fast = match (content_type, payload) {
        (ContentType::Json, Some(p)) if fast_path && p.len() <= MAX_RECORD_BYTES => crate::fast_json::event(p),
        _ => None,
    };
    let event: Event = match fast {
        Some(event) => event,
        None => decode_bytes(payload, content_type)?,
    };
    validate_event(&event)?;
    if !key.is_some_and(|k| is_conversation_key(k, &event)) {
        return Err(key_mismatch(key, conversation_key(&event)));
    }
    Ok(event)
}

/// Decodes and validates one `receipts.settings` record.
pub fn decode_setting(
    key: Option<&[u8]>,
    payload: Option<&[u8]>,
    content_type: ContentType,
) -> Result<Setting, DecodeError> {
    let setting: Setting = decode_bytes(payload, content_type)?;
    match &setting {
        Setting::AppConfig(c) => id("app_id", &c.app_id)?,
        Setting::UserSettings(u) => {
            id("app_id", &u.app_id)?;
            id("user", &u.user)?;
        }
    }
    check_key(key, settings_key(&setting))?;
    Ok(setting)
}

/// Encodes an event as bincode (serde, standard config): what a producer sends
/// with `content-type: application/bincode`.
pub fn encode_event_bincode(event: &Event) -> Vec<u8> {
    bincode::serde::encode_to_vec(event, bincode::config::standard())
        .expect("encoding owned strings and integers cannot fail")
}

/// Encodes a setting as bincode (serde, standard config).
pub fn encode_setting_bincode(setting: &Setting) -> Vec<u8> {
    bincode::serde::encode_to_vec(setting, bincode::config::standard())
        .expect("encoding owned strings and integers cannot fail")
}

fn id(field: &'static str, value: &str) -> Result<(), DecodeError> {
    if value.is_empty() {
        return Err(DecodeError::InvalidField { field, problem: "must not be empty".into() });
    }
    if value.len() > MAX_ID_BYTES {
        return Err(DecodeError::InvalidField {
            field,
            problem: format!("{} bytes, more than {MAX_ID_BYTES}", value.len()),
        });
    }
    Ok(())
}

fn conversation(actor: &str, c: &Conversation) -> Result<(), DecodeError> {
    match c {
        Conversation::Group { group_id } => id("conversation.group_id", group_id),
        Conversation::C2c { peer } => {
            id("conversation.peer", peer)?;
            if peer == actor {
                return Err(DecodeError::InvalidField {
                    field: "conversation.peer",
                    problem: "a C2C conversation needs two different users".into(),
                });
            }
            Ok(())
        }
    }
}

fn validate_event(event: &Event) -> Result<(), DecodeError> {
    id("app_id", event.app_id())?;
    match event {
        Event::GroupMembers(e) => {
            id("group_id", &e.group_id)?;
            if e.members.len() > MAX_MEMBERS_PER_EVENT {
                return Err(DecodeError::InvalidField {
                    field: "members",
                    problem: format!("{} members, more than {MAX_MEMBERS_PER_EVENT} in one record", e.members.len()),
                });
            }
            for m in &e.members {
                id("members[]", m)?;
            }
            if e.op == MembersOp::Snapshot && e.group_type.is_none() {
                return Err(DecodeError::InvalidField {
                    field: "group_type",
                    problem: "required with op snapshot".into(),
                });
            }
        }
        Event::MessageSent(e) => {
            id("msg_id", &e.msg_id)?;
            id("sender", &e.sender)?;
            conversation(&e.sender, &e.conversation)?;
        }
        Event::MessageRead(e) => {
            id("reader", &e.reader)?;
            conversation(&e.reader, &e.conversation)?;
            if e.msg_ids.is_empty() || e.msg_ids.len() > MAX_MSG_IDS_PER_READ {
                return Err(DecodeError::InvalidField {
                    field: "msg_ids",
                    problem: format!("{} ids; one report names 1 to {MAX_MSG_IDS_PER_READ}", e.msg_ids.len()),
                });
            }
            for m in &e.msg_ids {
                id("msg_ids[]", m)?;
            }
        }
        Event::ConversationRead(e) => {
            id("reader", &e.reader)?;
            conversation(&e.reader, &e.conversation)?;
            if !matches!(e.conversation, Conversation::C2c { .. }) {
                return Err(DecodeError::InvalidField {
                    field: "conversation",
                    problem: "conversation_read is for C2C conversations".into(),
                });
            }
        }
        Event::MessageRevoked(e) => {
            id("msg_id", &e.msg_id)?;
            id("sender", &e.sender)?;
            conversation(&e.sender, &e.conversation)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{GroupType, MessageSent};

    const SENT: &str = r#"{"type":"message_sent","app_id":"a1","msg_id":"m1","sender":"alice","conversation":{"type":"group","group_id":"g1"},"need_read_receipt":true,"sent_at":1732200000000}"#;

    #[test]
    fn contract_examples_decode() {
        let examples = [
            (
                "a1/group/g1",
                r#"{"type":"group_members","app_id":"a1","group_id":"g1","op":"snapshot","group_type":"Work","members":["alice","bob"],"at":1732200000000}"#,
            ),
            ("a1/group/g1", SENT),
            (
                "a1/group/g1",
                r#"{"type":"message_read","app_id":"a1","reader":"bob","conversation":{"type":"group","group_id":"g1"},"msg_ids":["m1","m2"],"read_at":1732200005000,"private":false}"#,
            ),
            (
                "a1/c2c/alice/bob",
                r#"{"type":"conversation_read","app_id":"a1","reader":"bob","conversation":{"type":"c2c","peer":"alice"},"read_at":1732200009000}"#,
            ),
            (
                "a1/group/g1",
                r#"{"type":"message_revoked","app_id":"a1","msg_id":"m1","sender":"alice","conversation":{"type":"group","group_id":"g1"},"at":1732200010000}"#,
            ),
        ];
        for (key, json) in examples {
            let e = decode_event(Some(key.as_bytes()), Some(json.as_bytes()), ContentType::Json)
                .unwrap_or_else(|err| panic!("{json}: {err}"));
            // JSON round trip and bincode round trip give the same event.
            let again = serde_json::to_vec(&e).unwrap();
            assert_eq!(decode_event(Some(key.as_bytes()), Some(&again), ContentType::Json).unwrap(), e);
            let bin = encode_event_bincode(&e);
            assert_eq!(decode_event(Some(key.as_bytes()), Some(&bin), ContentType::Bincode).unwrap(), e);
        }
        for (key, json) in [
            (
                "a1/config",
                r#"{"type":"app_config","app_id":"a1","c2c_receipts":true,"group_receipt_types":["Work","Public","Meeting"],"reciprocal_privacy":true,"retention_days":30,"at":1732200000000}"#,
            ),
            (
                "a1/user/bob",
                r#"{"type":"user_settings","app_id":"a1","user":"bob","read_receipts":false,"at":1732200000000}"#,
            ),
        ] {
            let s = decode_setting(Some(key.as_bytes()), Some(json.as_bytes()), ContentType::Json).unwrap();
            let bin = encode_setting_bincode(&s);
            assert_eq!(decode_setting(Some(key.as_bytes()), Some(&bin), ContentType::Bincode).unwrap(), s);
        }
    }

    #[test]
    fn app_config_fields_default() {
        let s = decode_setting(Some(b"a1/config"), Some(br#"{"type":"app_config","app_id":"a1"}"#), ContentType::Json)
            .unwrap();
        assert_eq!(s, Setting::AppConfig(crate::AppConfig::defaults("a1")));
    }

    #[test]
    fn rejections_carry_stable_reasons() {
        let k = Some(b"a1/group/g1".as_slice());
        let reason = |key: Option<&[u8]>, p: &[u8], ct| decode_event(key, Some(p), ct).unwrap_err().reason();
        assert_eq!(reason(k, b"{not json", ContentType::Json), "malformed");
        assert_eq!(reason(k, &SENT.as_bytes()[..40], ContentType::Json), "malformed");
        assert_eq!(reason(Some(b"a1/group/g2"), SENT.as_bytes(), ContentType::Json), "key_mismatch");
        assert_eq!(reason(None, SENT.as_bytes(), ContentType::Json), "key_mismatch");
        assert_eq!(reason(k, &[0xff, 0x01, 0x02], ContentType::Bincode), "malformed");
        assert_eq!(decode_event(k, None, ContentType::Json).unwrap_err().reason(), "empty_payload");
        let long = SENT.replace("\"m1\"", &format!("\"{}\"", "x".repeat(129)));
        assert_eq!(reason(k, long.as_bytes(), ContentType::Json), "invalid_field");
        let empty = SENT.replace("\"m1\"", "\"\"");
        assert_eq!(reason(k, empty.as_bytes(), ContentType::Json), "invalid_field");
        let ids: Vec<String> = (0..101).map(|i| format!("m{i}")).collect();
        let too_many = format!(
            r#"{{"type":"message_read","app_id":"a1","reader":"bob","conversation":{{"type":"group","group_id":"g1"}},"msg_ids":{},"read_at":1}}"#,
            serde_json::to_string(&ids).unwrap()
        );
        assert_eq!(reason(k, too_many.as_bytes(), ContentType::Json), "invalid_field");
        let snapshot_without_type =
            r#"{"type":"group_members","app_id":"a1","group_id":"g1","op":"snapshot","members":[],"at":1}"#;
        assert_eq!(reason(k, snapshot_without_type.as_bytes(), ContentType::Json), "invalid_field");
        assert_eq!(ContentType::from_header(Some(b"text/xml")).unwrap_err().reason(), "unsupported_content_type");
        assert_eq!(ContentType::from_header(Some(b"application/bincode")).unwrap(), ContentType::Bincode);
    }

    #[test]
    fn unknown_json_fields_are_ignored_for_forward_compatibility() {
        let with_extra = SENT.replace("\"sent_at\"", "\"future_field\":{\"x\":1},\"sent_at\"");
        let e = decode_event(Some(b"a1/group/g1"), Some(with_extra.as_bytes()), ContentType::Json).unwrap();
        assert!(matches!(e, Event::MessageSent(MessageSent { ref msg_id, .. }) if msg_id == "m1"));
        let _ = GroupType::Work;
    }

    #[test]
    fn truncated_bincode_never_panics() {
        let e = decode_event(Some(b"a1/group/g1"), Some(SENT.as_bytes()), ContentType::Json).unwrap();
        let bin = encode_event_bincode(&e);
        for cut in 0..bin.len() {
            let _ = decode_event(Some(b"a1/group/g1"), Some(&bin[..cut]), ContentType::Bincode);
        }
    }
}
