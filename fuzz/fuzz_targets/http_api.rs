//! HTTP request handling: any method, path, query, headers and body against
//! the full router (operations, query API, fallbacks, body limit) over a small
//! in-memory state. Every answer is a well-formed response below 500 with a
//! JSON body; never a panic.
//!
//! Input: the first line is `METHOD PATH?QUERY`, the second a bearer token
//! selector (`a1`, `a2`, anything else = none), the rest the body.
#![no_main]

use axum::body::Body;
use axum::http::Request;
use libfuzzer_sys::fuzz_target;
use receiptd_core::{Effects, Limits, PartitionState, PartitionView, SettingsTable};
use receiptd_http::Backend;
use receiptd_wire::{Conversation, Event, GroupMembers, GroupType, Id, MembersOp, MessageRead, MessageSent};
use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use tower::ServiceExt;

struct Fixed {
    settings: SettingsTable,
    state: PartitionState,
}

impl Backend for Fixed {
    fn readiness(&self) -> Result<(), &'static str> {
        Ok(())
    }
    fn healthy(&self) -> bool {
        true
    }
    fn metrics_text(&self) -> String {
        String::new()
    }
    fn view(&self, f: &mut dyn FnMut(&SettingsTable, &[Arc<PartitionView>])) -> bool {
        f(&self.settings, &[self.state.view().clone()]);
        true
    }
}

fn state() -> PartitionState {
    let (settings, limits, mut fx) = (SettingsTable::default(), Limits::default(), Effects::default());
    let mut state = PartitionState::new();
    let members: Vec<Id> = (0..300).map(|i| Id::from(format!("u{i}"))).collect();
    let mut events = vec![Event::GroupMembers(GroupMembers {
        app_id: "a1".into(),
        group_id: "g1".into(),
        op: MembersOp::Snapshot,
        group_type: Some(GroupType::Work),
        members: members.clone(),
        at: 1,
    })];
    for (m, conversation) in [
        ("m1", Conversation::Group { group_id: "g1".into() }),
        ("m2", Conversation::C2c { peer: "u1".into() }),
    ] {
        events.push(Event::MessageSent(MessageSent {
            app_id: "a1".into(),
            msg_id: m.into(),
            sender: "u0".into(),
            conversation,
            need_read_receipt: true,
            sent_at: 1,
        }));
    }
    for reader in members.iter().skip(1).step_by(3) {
        events.push(Event::MessageRead(MessageRead {
            app_id: "a1".into(),
            reader: reader.clone(),
            conversation: Conversation::Group { group_id: "g1".into() },
            msg_ids: vec!["m1".into()],
            read_at: 2,
            private: false,
        }));
    }
    for e in &events {
        state.apply(&settings, &limits, e, 2, &mut fx);
    }
    state
}

fn router() -> &'static axum::Router {
    static ROUTER: OnceLock<axum::Router> = OnceLock::new();
    ROUTER.get_or_init(|| {
        let backend = Arc::new(Fixed { settings: SettingsTable::default(), state: state() });
        let tokens = BTreeMap::from([("a1".to_owned(), "t1".to_owned()), ("a2".to_owned(), "t2".to_owned())]);
        receiptd_http::router(backend, tokens)
    })
}

fuzz_target!(|data: &[u8]| {
    let mut lines = data.splitn(3, |&b| b == b'\n');
    let first = String::from_utf8_lossy(lines.next().unwrap_or_default()).into_owned();
    let token = lines.next().unwrap_or_default();
    let body = lines.next().unwrap_or_default().to_vec();
    let (method, uri) = first.split_once(' ').unwrap_or(("GET", first.as_str()));
    let uri = if uri.starts_with('/') { uri.to_owned() } else { format!("/{uri}") };
    let mut request = Request::builder().method(method).uri(uri.as_str());
    match token {
        b"a1" => request = request.header("authorization", "Bearer t1"),
        b"a2" => request = request.header("authorization", "Bearer t2"),
        _ => {}
    }
    // Methods and URIs the HTTP parser would refuse never reach the router.
    let Ok(request) = request.header("content-type", "application/json").body(Body::from(body)) else { return };
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    runtime.block_on(async {
        let response = router().clone().oneshot(request).await.unwrap();
        let status = response.status();
        assert!(status.as_u16() < 500, "{status} for {method} {uri}");
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 24).await.unwrap();
        if status.as_u16() >= 400 {
            let v: serde_json::Value = serde_json::from_slice(&bytes).expect("error bodies are JSON");
            assert!(v["error"]["code"].is_string(), "{v}");
        }
    });
});
