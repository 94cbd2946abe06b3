//! Query latency in-process (no HTTP): one 100-member page of a 100,000-member
//! group's read and unread lists, and a 100-message receipts lookup, as the
//! API handlers run them on the partition view. Prints p50, p99, p99.9.
//!
//! `cargo bench --bench query`

use receiptd_core::{Effects, Limits, MemberFilter, PartitionState, SettingsTable};
use receiptd_wire::{Conversation, Event, GroupMembers, GroupType, Id, MembersOp, MessageRead, MessageSent};
use std::hint::black_box;
use std::time::Instant;

const MEMBERS: usize = 100_000;
const T0: u64 = 1_732_200_000_000;

fn build() -> PartitionState {
    let users: Vec<String> = (0..MEMBERS).map(|i| format!("user{i:06}")).collect();
    let settings = SettingsTable::default();
    let limits = Limits::default();
    let mut fx = Effects::default();
    let mut state = PartitionState::new();
    let g = Conversation::Group { group_id: "huge".into() };
    let mut apply = |e: Event| state.apply(&settings, &limits, &e, T0, &mut fx);
    for (i, chunk) in users.chunks(10_000).enumerate() {
        apply(Event::GroupMembers(GroupMembers {
            app_id: "a1".into(),
            group_id: "huge".into(),
            op: if i == 0 { MembersOp::Snapshot } else { MembersOp::Join },
            group_type: Some(GroupType::Work),
            members: chunk.iter().map(|u| Id::from(u.as_str())).collect(),
            at: T0,
        }));
    }
    for m in 0..100 {
        apply(Event::MessageSent(MessageSent {
            app_id: "a1".into(),
            msg_id: format!("m{m}").into(),
            sender: users[0].clone().into(),
            conversation: g.clone(),
            need_read_receipt: true,
            sent_at: T0,
        }));
    }
    // m0 is read by every other member (50,000 readers); the rest by a few.
    for (i, u) in users.iter().enumerate().skip(1) {
        let mut msg_ids = Vec::new();
        if i % 2 == 0 {
            msg_ids.push("m0".to_string().into());
        }
        if i % 997 == 0 {
            msg_ids.extend((1..100).map(|m| Id::from(format!("m{m}"))));
        }
        if !msg_ids.is_empty() {
            apply(Event::MessageRead(MessageRead {
                app_id: "a1".into(),
                reader: u.clone().into(),
                conversation: g.clone(),
                msg_ids,
                read_at: T0 + i as u64,
                private: false,
            }));
        }
    }
    state
}

fn percentiles(name: &str, mut samples: Vec<u128>) {
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)] as f64 / 1000.0;
    println!(
        "{name:<48} p50 {:>8.1} µs  p99 {:>8.1} µs  p99.9 {:>8.1} µs  ({} runs)",
        at(0.5),
        at(0.99),
        at(0.999),
        samples.len()
    );
}

fn main() {
    let state = build();
    let settings = SettingsTable::default();
    let runs = 5_000;
    for (name, filter) in [
        ("100-member page, unread list, 100k group", MemberFilter::Unread),
        ("100-member page, read list, 100k group", MemberFilter::Read),
    ] {
        let mut samples = Vec::with_capacity(runs);
        for i in 0..runs {
            // Cursors all over the list.
            let after = Some(((i * 7_919) % (MEMBERS - 200)) as u32);
            let t = Instant::now();
            let page =
                state.view().member_page(&settings, "a1", "huge", "m0", "user000000", filter, after, 100).unwrap();
            samples.push(t.elapsed().as_nanos());
            black_box(page);
        }
        percentiles(name, samples);
    }
    let g = Conversation::Group { group_id: "huge".into() };
    let ids: Vec<String> = (0..100).map(|m| format!("m{m}")).collect();
    let mut samples = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        for id in &ids {
            black_box(state.view().receipt(&settings, "a1", id, "user000000", &g).unwrap());
        }
        samples.push(t.elapsed().as_nanos());
    }
    percentiles("100-message receipts lookup, 100k group", samples);
}
