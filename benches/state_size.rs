//! Bytes per live message, counted: in memory with a counting allocator
//! around the binary's allocator (the message's state, its map entry and id,
//! and its share of every index), both as requested and as the allocator's
//! blocks (requests rounded up to mimalloc's size classes); and on disk
//! with RocksDB's own `total-sst-files-size` after a flush and full
//! compaction (LZ4, as in production), next to the sum of the stored values
//! before compression.
//! Each message's readers are distinct random members reading at random
//! times within the hour after the send.
//!
//! A second table holds one group's bytes against its history: a group of
//! 200 whose members leave and rejoin, one change an event, should grow
//! with its members, not with how many times its membership changed. It
//! also times those changes folded and the group restored from a store.
//! Its last rows have members leave for good and new users join in their
//! place: a newcomer takes the ordinal of a member who left, so the member
//! table holds the members, not every user who was ever one.
//!
//! `cargo bench --bench state_size`

use receiptd_core::{DeltaBuffer, Effects, Limits, PartitionState, SettingsTable};
use receiptd_loadgen::Rng;
use receiptd_store::{BatchBuffer, Store, StoreOptions};
use receiptd_wire::{Conversation, Event, GroupMembers, GroupType, Id, MembersOp, MessageRead, MessageSent};
use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicIsize, Ordering::Relaxed};

struct Counting;

/// Bytes requested and live.
static LIVE: AtomicIsize = AtomicIsize::new(0);
/// Bytes of the blocks holding them: requests rounded up to mimalloc's size
/// classes, what the process's memory pays.
static LIVE_BLOCKS: AtomicIsize = AtomicIsize::new(0);

fn block_of(ptr: *mut u8) -> isize {
    // SAFETY: called on blocks of `receiptd_alloc::Allocator` while live.
    unsafe { receiptd_alloc::usable_size(ptr) as isize }
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let ptr = receiptd_alloc::Allocator.alloc(layout);
        LIVE.fetch_add(layout.size() as isize, Relaxed);
        LIVE_BLOCKS.fetch_add(block_of(ptr), Relaxed);
        ptr
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Relaxed);
        LIVE_BLOCKS.fetch_sub(block_of(ptr), Relaxed);
        receiptd_alloc::Allocator.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let old_block = block_of(ptr);
        let new = receiptd_alloc::Allocator.realloc(ptr, layout, new_size);
        if !new.is_null() {
            LIVE.fetch_add(new_size as isize - layout.size() as isize, Relaxed);
            LIVE_BLOCKS.fetch_add(block_of(new) - old_block, Relaxed);
        }
        new
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn apply(state: &mut PartitionState, events: &[Event]) {
    let (settings, limits, mut fx) = (SettingsTable::default(), Limits::default(), Effects::default());
    for e in events {
        state.apply(&settings, &limits, e, 1_732_200_000_000, &mut fx);
    }
    let mut deltas = DeltaBuffer::new();
    state.take_receipts(&settings, &mut deltas);
    drop(deltas.drain());
}

/// Bytes per message: (in memory requested, in memory as blocks, SST, values)
fn measure(group: usize, readers: usize, messages: usize) -> (f64, f64, f64, f64) {
    let members: Vec<String> = (0..group).map(|i| format!("u{i}")).collect();
    let snapshot: Vec<Event> = members
        .chunks(100_000)
        .enumerate()
        .map(|(i, chunk)| {
            Event::GroupMembers(GroupMembers {
                app_id: "a1".into(),
                group_id: "g".into(),
                op: if i == 0 { MembersOp::Snapshot } else { MembersOp::Join },
                group_type: Some(GroupType::Work),
                members: chunk.iter().map(|u| Id::from(u.as_str())).collect(),
                at: 0,
            })
        })
        .collect();
    let conversation = Conversation::Group { group_id: "g".into() };
    let mut traffic = Vec::new();
    let mut rng = Rng::new(group as u64 ^ readers as u64);
    for m in 0..messages {
        // Distinct members other than the sender, in random order, each
        // reading at a random time within the hour after the send: neither
        // ordinals nor times line up for the encoding or LZ4 to exploit.
        let mut who = std::collections::HashSet::new();
        let mut picked = Vec::with_capacity(readers);
        while picked.len() < readers {
            let k = 1 + rng.below(group as u64 - 1) as usize;
            if who.insert(k) {
                picked.push(k);
            }
        }
        traffic.push(Event::MessageSent(MessageSent {
            app_id: "a1".into(),
            msg_id: format!("m{m}").into(),
            sender: members[0].clone().into(),
            conversation: conversation.clone(),
            need_read_receipt: true,
            sent_at: 1_732_200_000_000,
        }));
        for k in picked {
            traffic.push(Event::MessageRead(MessageRead {
                app_id: "a1".into(),
                reader: members[k].clone().into(),
                conversation: conversation.clone(),
                msg_ids: vec![format!("m{m}").into()],
                read_at: 1_732_200_000_000 + rng.below(3_600_000),
                private: false,
            }));
        }
    }

    // Each message's value, once, into a store of its own: SST bytes then
    // are the messages' alone (plus one file's fixed overhead). The write
    // batch is written (and freed) before memory is counted: it is the
    // flush's, not the state's. It is written on a thread of its own, as
    // the worker's store writer does: the room that thread keeps for
    // sorting batches (up to 16 MiB, a fixed cost of the writer) is freed
    // with it. Written here, that room counted about 108 B a message in
    // the 32-member rows from the thirty-fourth sitting to the forty-fifth.
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
    let (settings, mut deltas) = (SettingsTable::default(), DeltaBuffer::new());
    let mut state = PartitionState::new();
    apply(&mut state, &snapshot);
    store.stage(&mut BatchBuffer::default(), 0, &mut state, &settings, &mut deltas, 0);

    let (before, blocks_before) = (LIVE.load(Relaxed), LIVE_BLOCKS.load(Relaxed));
    apply(&mut state, &traffic);
    let mut batch = BatchBuffer::default();
    let staged = store.stage(&mut batch, 0, &mut state, &settings, &mut deltas, 0);
    assert_eq!(staged, messages, "the traffic changed each message, and nothing else");
    let values = batch.size_in_bytes() as f64 / messages as f64;
    std::thread::scope(|scope| scope.spawn(|| store.write(batch).unwrap()).join().unwrap());
    let in_memory = (LIVE.load(Relaxed) - before) as f64 / messages as f64;
    let in_blocks = (LIVE_BLOCKS.load(Relaxed) - blocks_before) as f64 / messages as f64;
    let disk = store.compact_all().unwrap() as f64 / messages as f64;
    drop(traffic);
    (in_memory, in_blocks, disk, values)
}

/// One group of `group` members after `changes` membership changes, each a
/// random member leaving or rejoining, or with `new_users`, in turns, a
/// random member leaving and a user never seen joining: (bytes in memory as
/// blocks, ns a change folded, ms the partition restored).
fn measure_history(group: usize, changes: usize, new_users: bool) -> (f64, f64, f64) {
    let members: Vec<Id> = (0..group).map(|i| Id::from(format!("u{i}").as_str())).collect();
    let change = |op, members: Vec<Id>| {
        Event::GroupMembers(GroupMembers {
            app_id: "a1".into(),
            group_id: "g".into(),
            op,
            group_type: None,
            members,
            at: 0,
        })
    };
    let mut rng = Rng::new(changes as u64);
    let mut present = vec![true; group];
    let (mut current, mut left) = (members.clone(), 0);
    let history: Vec<Event> = (0..changes)
        .map(|i| {
            let k = rng.below(group as u64) as usize;
            if new_users && i % 2 == 0 {
                left = k;
                change(MembersOp::Leave, vec![current[k].clone()])
            } else if new_users {
                current[left] = Id::from(format!("n{i}").as_str());
                change(MembersOp::Join, vec![current[left].clone()])
            } else {
                present[k] = !present[k];
                change(if present[k] { MembersOp::Join } else { MembersOp::Leave }, vec![members[k].clone()])
            }
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
    let (settings, mut deltas) = (SettingsTable::default(), DeltaBuffer::new());
    let blocks_before = LIVE_BLOCKS.load(Relaxed);
    let mut state = PartitionState::new();
    apply(&mut state, &[change(MembersOp::Snapshot, members.clone())]);
    let started = std::time::Instant::now();
    apply(&mut state, &history);
    let per_change = started.elapsed().as_nanos() as f64 / changes as f64;
    // Counted as a flush leaves it: the changes staged and written.
    let mut batch = BatchBuffer::default();
    store.stage(&mut batch, 0, &mut state, &settings, &mut deltas, 0);
    store.write(batch).unwrap();
    let in_blocks = (LIVE_BLOCKS.load(Relaxed) - blocks_before) as f64;
    drop(state);
    let started = std::time::Instant::now();
    let (restored, _) = store.load_partition(0).unwrap();
    let restore_ms = started.elapsed().as_secs_f64() * 1e3;
    drop(restored);
    (in_blocks, per_change, restore_ms)
}

fn main() {
    println!("| group | reads per message | messages | in memory, B/msg | as allocator blocks | target | on disk (SST, LZ4), B/msg | write batch, B/msg | target (G <= 1024) |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for (group, readers, messages) in [
        (32, 8, 50_000),
        (32, 31, 50_000),
        (1_024, 10, 20_000),
        (1_024, 512, 2_000),
        (100_000, 10, 2_000),
        (100_000, 1_000, 200),
    ] {
        let (mem, blocks, disk, values) = measure(group, readers, messages);
        let mem_target = 8 * group.div_ceil(64) + 16;
        let disk_target = if group <= 1_024 {
            format!("{}", group.div_ceil(8).min(2 * readers) + 12)
        } else {
            "grows with reads".into()
        };
        println!(
            "| {group} | {readers} | {messages} | {mem:.0} | {blocks:.0} | {mem_target} | {disk:.0} | {values:.0} | {disk_target} |"
        );
    }
    println!();
    println!(
        "| group | membership changes | who joins | group in memory, B (allocator blocks) | ns a change folded | restored, ms |"
    );
    println!("|---|---|---|---|---|---|");
    let runs = [0, 10_000, 100_000, 1_000_000, 10_000_000].map(|changes| (changes, false));
    for (changes, new_users) in runs.into_iter().chain([(100_000, true), (1_000_000, true)]) {
        let (blocks, per_change, restore_ms) = measure_history(200, changes, new_users);
        let per_change = if changes == 0 { "-".to_string() } else { format!("{per_change:.0}") };
        let who = if new_users { "new users" } else { "members again" };
        println!("| 200 | {changes} | {who} | {blocks:.0} | {per_change} | {restore_ms:.1} |");
    }
}
