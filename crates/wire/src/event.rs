//! Input events and settings, as in CONTRACT.md §2 and §3.
//!
//! JSON uses internally tagged objects (`{"type":"message_read",...}`). bincode
//! cannot decode that form (it is not self-describing), so the same types
//! encode positionally there: the enum variant index in declaration order,
//! then the fields in declaration order. The switch is serde's
//! `is_human_readable`, so one set of types serves both encodings.

use crate::Id;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Which conversation an event belongs to, relative to the event's actor.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Conversation {
    /// One-to-one: `peer` is the other party.
    C2c {
        /// The other party of the conversation.
        peer: Id,
    },
    /// A group conversation.
    Group {
        /// The group's id.
        group_id: Id,
    },
}

/// The group types of Tencent IM. Receipts are enabled per type and app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum GroupType {
    /// Work group (private, invite only).
    Work,
    /// Public group.
    Public,
    /// Meeting group.
    Meeting,
    /// Community (very large groups).
    Community,
    /// Audio-video chat room.
    AVChatRoom,
}

impl GroupType {
    /// The contract's name of the type.
    pub fn as_str(self) -> &'static str {
        match self {
            GroupType::Work => "Work",
            GroupType::Public => "Public",
            GroupType::Meeting => "Meeting",
            GroupType::Community => "Community",
            GroupType::AVChatRoom => "AVChatRoom",
        }
    }
}

/// What a `group_members` event does to the member set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MembersOp {
    /// Replace the member set (`group_type` required).
    Snapshot,
    /// Add members.
    Join,
    /// Remove members.
    Leave,
    /// The group and all its receipt state are gone.
    Dismiss,
}

/// `group_members`: a change of a group's member set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupMembers {
    /// The app (tenant).
    pub app_id: Id,
    /// The group.
    pub group_id: Id,
    /// What happens to the member set.
    pub op: MembersOp,
    /// The group's type; required with `snapshot`.
    #[serde(default)]
    pub group_type: Option<GroupType>,
    /// The members the op names (empty for `dismiss`).
    #[serde(default)]
    pub members: Vec<Id>,
    /// When the change happened, Unix ms.
    pub at: u64,
}

/// `message_sent`: a message was sent and may want read receipts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageSent {
    /// The app (tenant).
    pub app_id: Id,
    /// The message id, unique within the app.
    pub msg_id: Id,
    /// Who sent it.
    pub sender: Id,
    /// Where, relative to the sender.
    pub conversation: Conversation,
    /// Whether the sender asked for read receipts.
    #[serde(default)]
    pub need_read_receipt: bool,
    /// When it was sent, Unix ms.
    pub sent_at: u64,
}

/// `message_read`: a user read up to 100 messages of one conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageRead {
    /// The app (tenant).
    pub app_id: Id,
    /// Who read.
    pub reader: Id,
    /// Where, relative to the reader.
    pub conversation: Conversation,
    /// The messages read (1 to 100).
    pub msg_ids: Vec<Id>,
    /// When, Unix ms.
    pub read_at: u64,
    /// A private read is recorded but never revealed.
    #[serde(default)]
    pub private: bool,
}

/// `conversation_read`: a user marked a whole C2C conversation read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConversationRead {
    /// The app (tenant).
    pub app_id: Id,
    /// Who read.
    pub reader: Id,
    /// The conversation, relative to the reader (C2C only).
    pub conversation: Conversation,
    /// The read mark, Unix ms.
    pub read_at: u64,
}

/// `message_revoked`: the message was recalled; its receipt state is dropped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageRevoked {
    /// The app (tenant).
    pub app_id: Id,
    /// The message.
    pub msg_id: Id,
    /// Its sender.
    pub sender: Id,
    /// Where, relative to the sender.
    pub conversation: Conversation,
    /// When, Unix ms.
    pub at: u64,
}

/// One record of `receipts.events`.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// See [`GroupMembers`].
    GroupMembers(GroupMembers),
    /// See [`MessageSent`].
    MessageSent(MessageSent),
    /// See [`MessageRead`].
    MessageRead(MessageRead),
    /// See [`ConversationRead`].
    ConversationRead(ConversationRead),
    /// See [`MessageRevoked`].
    MessageRevoked(MessageRevoked),
}

impl Event {
    /// The contract's `type` string, used as a metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::GroupMembers(_) => "group_members",
            Event::MessageSent(_) => "message_sent",
            Event::MessageRead(_) => "message_read",
            Event::ConversationRead(_) => "conversation_read",
            Event::MessageRevoked(_) => "message_revoked",
        }
    }

    /// The app the event belongs to.
    pub fn app_id(&self) -> &str {
        match self {
            Event::GroupMembers(e) => &e.app_id,
            Event::MessageSent(e) => &e.app_id,
            Event::MessageRead(e) => &e.app_id,
            Event::ConversationRead(e) => &e.app_id,
            Event::MessageRevoked(e) => &e.app_id,
        }
    }
}

fn default_true() -> bool {
    true
}
fn default_group_receipt_types() -> Vec<GroupType> {
    vec![GroupType::Work, GroupType::Public, GroupType::Meeting]
}
fn default_retention_days() -> u32 {
    30
}

/// `app_config`: an app's receipt settings. Missing fields take the defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppConfig {
    /// The app (tenant).
    pub app_id: String,
    /// Receipts in C2C conversations. Default true.
    #[serde(default = "default_true")]
    pub c2c_receipts: bool,
    /// Group types with receipts. Default Work, Public, Meeting.
    #[serde(default = "default_group_receipt_types")]
    pub group_receipt_types: Vec<GroupType>,
    /// A user whose receipts are off also gets none. Default true.
    #[serde(default = "default_true")]
    pub reciprocal_privacy: bool,
    /// Receipt state older than this (from `sent_at`) is gone. Default 30.
    #[serde(default = "default_retention_days")]
    pub retention_days: u32,
    /// When, Unix ms.
    #[serde(default)]
    pub at: u64,
}

impl AppConfig {
    /// The values an app gets before any `app_config` arrives.
    pub fn defaults(app_id: &str) -> Self {
        AppConfig {
            app_id: app_id.to_owned(),
            c2c_receipts: true,
            group_receipt_types: default_group_receipt_types(),
            reciprocal_privacy: true,
            retention_days: default_retention_days(),
            at: 0,
        }
    }
}

/// `user_settings`: one user's receipt switch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserSettings {
    /// The app (tenant).
    pub app_id: String,
    /// The user.
    pub user: String,
    /// Whether the user's reads may be revealed.
    pub read_receipts: bool,
    /// When, Unix ms.
    #[serde(default)]
    pub at: u64,
}

/// One record of `receipts.settings`.
#[derive(Debug, Clone, PartialEq)]
pub enum Setting {
    /// See [`AppConfig`].
    AppConfig(AppConfig),
    /// See [`UserSettings`].
    UserSettings(UserSettings),
}

// ---- serde: tagged objects for JSON, positional enums for bincode ----

/// Writes `Serialize`/`Deserialize` for a public enum through two private
/// mirrors: one internally tagged by `type` (JSON), one positional (bincode).
/// With `json: Flat`, JSON is decoded through the flat struct `Flat` instead
/// (one pass, no buffering: the events' hot path).
macro_rules! dual_form {
    (@json $d:ident, $public:ident, $tagged:ident, { $($variant:ident),+ }) => {
        Ok(match $tagged::deserialize($d)? { $($tagged::$variant(v) => $public::$variant(v)),+ })
    };
    (@json $d:ident, $public:ident, $tagged:ident, { $($variant:ident),+ } $flat:ty) => {
        <$flat>::deserialize($d)?.build().map_err(serde::de::Error::missing_field)
    };
    ($public:ident, $tagged:ident, $compact:ident, $(json: $flat:ty,)? { $($variant:ident($inner:ty) = $tag:literal),+ $(,)? }) => {
        #[derive(Serialize, Deserialize)]
        #[serde(tag = "type")]
        enum $tagged { $(#[serde(rename = $tag)] $variant($inner)),+ }

        #[derive(Serialize, Deserialize)]
        enum $compact { $($variant($inner)),+ }

        impl Serialize for $public {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                // The mirrors own their data; a clone keeps this simple and
                // encoding is off every hot path (tests, generators, tools).
                if s.is_human_readable() {
                    match self.clone() { $($public::$variant(v) => $tagged::$variant(v).serialize(s)),+ }
                } else {
                    match self.clone() { $($public::$variant(v) => $compact::$variant(v).serialize(s)),+ }
                }
            }
        }

        impl<'de> Deserialize<'de> for $public {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                if d.is_human_readable() {
                    dual_form!(@json d, $public, $tagged, { $($variant),+ } $($flat)?)
                } else {
                    Ok(match $compact::deserialize(d)? { $($compact::$variant(v) => $public::$variant(v)),+ })
                }
            }
        }
    };
}

/// The `type` of an event.
#[derive(Deserialize)]
pub(crate) enum EventType {
    #[serde(rename = "group_members")]
    GroupMembers,
    #[serde(rename = "message_sent")]
    MessageSent,
    #[serde(rename = "message_read")]
    MessageRead,
    #[serde(rename = "conversation_read")]
    ConversationRead,
    #[serde(rename = "message_revoked")]
    MessageRevoked,
}

/// Every field any event has; [`FlatEvent::build`] takes the ones its type
/// needs. Fields of other types are ignored, as unknown fields are.
#[derive(Deserialize)]
pub(crate) struct FlatEvent {
    #[serde(rename = "type")]
    pub(crate) kind: EventType,
    pub(crate) app_id: Option<Id>,
    pub(crate) group_id: Option<Id>,
    pub(crate) op: Option<MembersOp>,
    pub(crate) group_type: Option<GroupType>,
    pub(crate) members: Option<Vec<Id>>,
    pub(crate) msg_id: Option<Id>,
    pub(crate) sender: Option<Id>,
    pub(crate) conversation: Option<Conversation>,
    pub(crate) need_read_receipt: Option<bool>,
    pub(crate) sent_at: Option<u64>,
    pub(crate) reader: Option<Id>,
    pub(crate) msg_ids: Option<Vec<Id>>,
    pub(crate) read_at: Option<u64>,
    pub(crate) private: Option<bool>,
    pub(crate) at: Option<u64>,
}

impl FlatEvent {
    /// The event, or the first missing required field. Inline: the fast
    /// decoder's call then moves its fields straight into the event.
    #[inline]
    pub(crate) fn build(self) -> Result<Event, &'static str> {
        fn req<T>(v: Option<T>, name: &'static str) -> Result<T, &'static str> {
            v.ok_or(name)
        }
        let app_id = req(self.app_id, "app_id")?;
        Ok(match self.kind {
            EventType::GroupMembers => Event::GroupMembers(GroupMembers {
                app_id,
                group_id: req(self.group_id, "group_id")?,
                op: req(self.op, "op")?,
                group_type: self.group_type,
                members: self.members.unwrap_or_default(),
                at: req(self.at, "at")?,
            }),
            EventType::MessageSent => Event::MessageSent(MessageSent {
                app_id,
                msg_id: req(self.msg_id, "msg_id")?,
                sender: req(self.sender, "sender")?,
                conversation: req(self.conversation, "conversation")?,
                need_read_receipt: self.need_read_receipt.unwrap_or(false),
                sent_at: req(self.sent_at, "sent_at")?,
            }),
            EventType::MessageRead => Event::MessageRead(MessageRead {
                app_id,
                reader: req(self.reader, "reader")?,
                conversation: req(self.conversation, "conversation")?,
                msg_ids: req(self.msg_ids, "msg_ids")?,
                read_at: req(self.read_at, "read_at")?,
                private: self.private.unwrap_or(false),
            }),
            EventType::ConversationRead => Event::ConversationRead(ConversationRead {
                app_id,
                reader: req(self.reader, "reader")?,
                conversation: req(self.conversation, "conversation")?,
                read_at: req(self.read_at, "read_at")?,
            }),
            EventType::MessageRevoked => Event::MessageRevoked(MessageRevoked {
                app_id,
                msg_id: req(self.msg_id, "msg_id")?,
                sender: req(self.sender, "sender")?,
                conversation: req(self.conversation, "conversation")?,
                at: req(self.at, "at")?,
            }),
        })
    }
}

dual_form!(Event, EventTagged, EventCompact, json: FlatEvent, {
    GroupMembers(GroupMembers) = "group_members",
    MessageSent(MessageSent) = "message_sent",
    MessageRead(MessageRead) = "message_read",
    ConversationRead(ConversationRead) = "conversation_read",
    MessageRevoked(MessageRevoked) = "message_revoked",
});

dual_form!(Setting, SettingTagged, SettingCompact, {
    AppConfig(AppConfig) = "app_config",
    UserSettings(UserSettings) = "user_settings",
});

#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct C2cFields {
    peer: Id,
}
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct GroupFields {
    group_id: Id,
}

/// Private mirror of [`Conversation`] in the dual form.
#[derive(Clone)]
pub(crate) enum ConversationForm {
    C2c(C2cFields),
    Group(GroupFields),
}

/// The `type` of a conversation.
#[derive(Deserialize)]
pub(crate) enum ConversationType {
    #[serde(rename = "c2c")]
    C2c,
    #[serde(rename = "group")]
    Group,
}

/// Every field of a conversation, as for [`FlatEvent`].
#[derive(Deserialize)]
pub(crate) struct FlatConversation {
    #[serde(rename = "type")]
    pub(crate) kind: ConversationType,
    pub(crate) peer: Option<Id>,
    pub(crate) group_id: Option<Id>,
}

impl FlatConversation {
    pub(crate) fn build(self) -> Result<ConversationForm, &'static str> {
        Ok(match self.kind {
            ConversationType::C2c => ConversationForm::C2c(C2cFields { peer: self.peer.ok_or("peer")? }),
            ConversationType::Group => {
                ConversationForm::Group(GroupFields { group_id: self.group_id.ok_or("group_id")? })
            }
        })
    }
}

dual_form!(ConversationForm, ConversationTagged, ConversationCompact, json: FlatConversation, {
    C2c(C2cFields) = "c2c",
    Group(GroupFields) = "group",
});

impl Serialize for Conversation {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Conversation::C2c { peer } => ConversationForm::C2c(C2cFields { peer: peer.clone() }),
            Conversation::Group { group_id } => ConversationForm::Group(GroupFields { group_id: group_id.clone() }),
        }
        .serialize(s)
    }
}

impl From<ConversationForm> for Conversation {
    fn from(form: ConversationForm) -> Self {
        match form {
            ConversationForm::C2c(f) => Conversation::C2c { peer: f.peer },
            ConversationForm::Group(f) => Conversation::Group { group_id: f.group_id },
        }
    }
}

impl<'de> Deserialize<'de> for Conversation {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        ConversationForm::deserialize(d).map(Conversation::from)
    }
}
