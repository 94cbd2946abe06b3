//! `receiptd inspect`: the folded state of a store as canonical JSON (sorted,
//! stable), so two stores can be compared with `diff`.

use receiptd_core::{MessageTarget, PartitionState, SettingsTable};
use receiptd_store::Store;
use serde_json::{json, Value};
use std::path::Path;

/// Prints the dump to stdout.
pub fn run(dir: &Path) -> anyhow::Result<()> {
    let store = Store::open_read_only(dir)?;
    println!("{}", serde_json::to_string_pretty(&dump(&store)?)?);
    Ok(())
}

/// The dump: per partition its checkpoint; then every message and mark.
pub fn dump(store: &Store) -> anyhow::Result<Value> {
    let mut partitions = Vec::new();
    let mut messages = Vec::new();
    let mut marks = Vec::new();
    for p in store.partitions()? {
        let (state, checkpoint) = store.load_partition(p)?;
        partitions.push(json!({
            "partition": p,
            "next_offset": checkpoint.map(|c| c.next_offset),
            "held_reads": state.held_count(),
        }));
        collect(&state, &mut messages, &mut marks);
    }
    messages.sort_by(|a, b| {
        (a["app_id"].as_str(), a["msg_id"].as_str()).cmp(&(b["app_id"].as_str(), b["msg_id"].as_str()))
    });
    marks.sort_by_key(|m| m.to_string());
    Ok(json!({"partitions": partitions, "messages": messages, "marks": marks}))
}

fn collect(state: &PartitionState, messages: &mut Vec<Value>, marks: &mut Vec<Value>) {
    // The state as folded: privacy settings of today are applied by queries,
    // not by this dump.
    let settings = SettingsTable::default();
    for app in state.app_ids() {
        for msg_id in state.message_ids(app) {
            let msg_id = msg_id.as_str();
            // Counts and lists first: each locks the message for itself.
            let (read, unread) = state.counts(&settings, app, msg_id).unwrap_or((0, 0));
            let lists = state.group_lists(&settings, app, msg_id);
            let m = state.message(app, msg_id).expect("listed");
            let (conversation, readers) = match &m.target {
                MessageTarget::Group { group_id, .. } => {
                    let (r, _) = lists.unwrap_or_default();
                    let mut readers: Vec<String> = r.into_iter().map(|(u, _)| u).collect();
                    readers.sort();
                    (json!({"type": "group", "group_id": group_id}), readers)
                }
                MessageTarget::C2c { peer } => {
                    let readers = if m.visible_reads > 0 { vec![str::to_owned(peer)] } else { vec![] };
                    (json!({"type": "c2c", "peer": peer}), readers)
                }
            };
            messages.push(json!({
                "app_id": app,
                "msg_id": msg_id,
                "sender": m.sender,
                "conversation": conversation,
                "tracking": format!("{:?}", m.tracking),
                "version": m.version(),
                "timestamp": m.timestamp,
                "read_count": read,
                "unread_count": unread,
                "readers": readers,
                "hidden_reads": m.readers.hidden_count(),
                "reader_pages": m.reader_pages(),
            }));
        }
        for (reader, peer, read_at) in state.marks(app) {
            marks.push(json!({"app_id": app, "reader": reader, "peer": peer, "read_at": read_at}));
        }
    }
}
