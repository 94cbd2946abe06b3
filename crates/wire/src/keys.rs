//! Record keys. Every event of one conversation carries the same key, so it
//! lands in one partition, in order; the fold relies on that.

use crate::{Conversation, Event, Setting};

/// The conversation key an event must carry: C2C `{app}/c2c/{u1}/{u2}` with
/// `u1 < u2` in byte order, group `{app}/group/{group_id}`.
pub fn conversation_key(event: &Event) -> String {
    let (app, actor, conversation) = match event {
        Event::GroupMembers(e) => return group_key(&e.app_id, &e.group_id),
        Event::MessageSent(e) => (&e.app_id, &e.sender, &e.conversation),
        Event::MessageRead(e) => (&e.app_id, &e.reader, &e.conversation),
        Event::ConversationRead(e) => (&e.app_id, &e.reader, &e.conversation),
        Event::MessageRevoked(e) => (&e.app_id, &e.sender, &e.conversation),
    };
    match conversation {
        Conversation::Group { group_id } => group_key(app, group_id),
        Conversation::C2c { peer } => {
            let (low, high) = if actor.as_bytes() <= peer.as_bytes() { (actor, peer) } else { (peer, actor) };
            format!("{app}/c2c/{low}/{high}")
        }
    }
}

fn group_key(app: &str, group_id: &str) -> String {
    format!("{app}/group/{group_id}")
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
    format!("{app_id}/{recipient}")
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
    fn c2c_key_is_the_same_from_both_sides() {
        assert_eq!(conversation_key(&read("bob", "alice")), "a1/c2c/alice/bob");
        assert_eq!(conversation_key(&read("alice", "bob")), "a1/c2c/alice/bob");
    }
}
