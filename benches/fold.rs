//! The pure fold on one core: pre-decoded events into a `PartitionState`,
//! lookup, dedupe, counts and delta emission included (receipts taken every
//! 1,000 message reads, one flush window's worth).
//!
//! - `fold/demo_mix_200k`: the demo's mix, from an empty state.
//! - `reads/*`: reads into 1,000,000 live messages in groups of 32, either
//!   clustered on the newest 1,000 messages (hot) or uniform over all of
//!   them; receiptd's fold against a naive `HashMap<u64, HashSet<u32>>` fold
//!   of the same reads (ids pre-interned for it), in the same run, and
//!   against a naive fold of the same events as they come, string ids and
//!   all (`HashMap<String, HashSet<String>>`): what the ids alone cost.
//! - `mix/*/drain_mix`: the drain bench's mix (below), folded one event
//!   at a time and looked up ahead as the worker folds a batch.
//! - `stage/mix_50k_window`: a flush's staging of 50,000 events of the
//!   drain's mix (see below), timed without the fold.
//!
//! `cargo bench --bench fold`
//!
//! The same reads can also be counted instead of timed, which the shared,
//! noisy machines this runs on cannot disturb: `benches/counted.sh fold` runs
//! this binary under callgrind with `RECEIPTD_FOLD_COUNTED=hot|uniform|mix`
//! and reports instructions and simulated cache misses per event (on 100,000
//! messages, so that valgrind finishes in minutes). `mix` is the drain
//! bench's traffic (`TrafficShape::bench()`: a send in five events, early,
//! duplicate and private reads), counted after 300,000 events of warm-up;
//! `mix_config` is the same with settings as a production app has them:
//! its config (the defaults), and a user with receipts off (one who sends
//! and reads nothing here, so that every event folds as in `mix`; but
//! with someone off, unread counts are recounted instead of cached).
//! `mix_long_msg_ids` is `mix` with message ids of 38 bytes in the form
//! Tencent IM gives them (`144115233874815003-1608262010-m123`): too long
//! to sit inline in an `Id`, where the bench's own ids all do.
//! `mix_read_batch` is `mix` with group reads naming up to ten messages
//! (`TrafficShape::read_batch`), counted per event.
//! `ten_per_read` reads ten messages an event, as a client reads a group
//! chat's unread messages in one call: a member of a hot group's 10
//! newest messages, 20,000 events; `one_per_read` is the same 200,000
//! message reads, one an event. Both count per message read.
//! `churn` is one group of 100,000 members whose 100 messages have about
//! 2,000 readers each, read by random members while every 100th event is
//! a membership change (a member leaves, a newcomer joins, in turn): what
//! a change costs the next reads of every message. `switching` is the
//! same reads with a member switching receipts off or back on every 100th
//! event instead, which changes what every message of the app counts;
//! `churn_switching` has both.
//! `big_messages` is the
//! same group's first 4 messages each read by 50,000 members, the reads
//! of the four interleaved: what a reader costs a message with tens of
//! thousands. Run without valgrind
//! (`RECEIPTD_FOLD_COUNTED=churn` and the bench binary), each case also
//! prints its wall time.
//!
//! `RECEIPTD_STAGE_COUNTED=mix` (`benches/counted.sh stage`) counts the
//! flush's staging instead, as the worker makes it: the drain's mix folded
//! in windows of 50,000 events (about one flush of the drain bench), and
//! each window's changed entities encoded into a RocksDB write batch with
//! their receipts taken. Only the staging is counted, per event folded.
//! `mix_written` also counts each batch's write into a store (the store
//! writer thread's part of a flush, without its fsync);
//! `mix_read_batch` stages the mix whose group reads name up to ten
//! messages. The same staging is timed as `stage/mix_50k_window` (one
//! window's staging per iteration; its fold is not timed).
//! `big_messages` stages the fold case of that name in flush windows of
//! 1,000 reads, each written into a store: what a flush writes and costs
//! when its messages have tens of thousands of readers (it prints the
//! bytes, and its wall time when run without valgrind; with
//! `RECEIPTD_STAGE_RESTORED` set, the group is stored too, and it prints
//! how long the partition takes to restore).

use criterion::measurement::WallTime;
use criterion::{criterion_group, BatchSize, BenchmarkGroup, Criterion, Throughput};
use receiptd_core::{DeltaBuffer, Effects, Limits, PartitionState, ReadAhead, SettingsTable, PREFETCH_AHEAD};
use receiptd_loadgen::{Rng, Traffic, TrafficShape};
use receiptd_wire::{
    AppConfig, Conversation, Event, GroupMembers, GroupType, Id, MembersOp, MessageRead, MessageSent, Setting,
    UserSettings,
};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

// The binary's allocator, so that the figures are the worker's.
#[global_allocator]
static ALLOCATOR: receiptd_alloc::Allocator = receiptd_alloc::Allocator;

const APP: &str = "bench";
const MESSAGES: u64 = 1_000_000;
const GROUP_SIZE: u64 = 32;
const GROUPS: u64 = 10_000;
const HOT_WINDOW: u64 = 1_000;
/// Reads per measured iteration; each iteration takes fresh reads.
const CHUNK: usize = 100_000;
const CHUNKS: usize = 8;

fn demo_mix(c: &mut Criterion) {
    let events = Traffic::new(TrafficShape::demo()).take(200_000);
    let settings = SettingsTable::default();
    let limits = Limits::default();
    let mut group = c.benchmark_group("fold");
    group.throughput(Throughput::Elements(events.len() as u64));
    group.sample_size(10);
    group.bench_function("demo_mix_200k", |b| {
        b.iter_batched(
            PartitionState::new,
            |mut state| {
                let mut fx = Effects::default();
                let mut deltas = DeltaBuffer::new();
                for (i, e) in events.iter().enumerate() {
                    state.apply(&settings, &limits, e, i as u64, &mut fx);
                    if i % 1_000 == 999 {
                        flush(&mut state, &settings, &mut deltas);
                    }
                }
                state
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

/// The flush's pass, as the engine makes it, without the encoding: each
/// changed entity's receipt taken and its value handed over, and each
/// record's receipt list handed back once "sent".
fn flush(state: &mut PartitionState, settings: &SettingsTable, deltas: &mut DeltaBuffer) {
    state.flush_changes(settings, deltas, |key, entity| {
        std::hint::black_box((key, entity));
    });
    for record in deltas.drain() {
        deltas.recycle(std::hint::black_box(record).receipts);
    }
}

fn member(group: u64, k: u64) -> u64 {
    group * GROUP_SIZE + k
}

/// The live state's size: messages, and the groups they are spread over.
#[derive(Clone, Copy)]
struct Shape {
    messages: u64,
    groups: u64,
}

const TIMED: Shape = Shape { messages: MESSAGES, groups: GROUPS };
/// Small enough for valgrind; the hot window is the same 1,000 messages.
const COUNTED: Shape = Shape { messages: 100_000, groups: 1_000 };

/// A read: (message, reader), both as numbers; the reader is a member of the
/// message's group other than its sender (member 0).
fn reads(shape: Shape, hot: bool, seed: u64, n: usize) -> Vec<(u64, u64)> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|_| {
            let m = if hot { shape.messages - 1 - rng.below(HOT_WINDOW) } else { rng.below(shape.messages) };
            (m, member(m % shape.groups, 1 + rng.below(GROUP_SIZE - 1)))
        })
        .collect()
}

fn read_event(shape: Shape, m: u64, reader: u64) -> Event {
    Event::MessageRead(MessageRead {
        app_id: APP.into(),
        reader: format!("u{reader}").into(),
        conversation: Conversation::Group { group_id: format!("g{}", m % shape.groups).into() },
        msg_ids: vec![format!("m{m}").into()],
        read_at: 2,
        private: false,
    })
}

/// Reads of `per` messages an event: a member of the group of a hot
/// message reads it and the `per - 1` before it in that group, in one
/// event (`one_event`) or in one event each. `n` message reads in all.
fn reads_of_several(shape: Shape, per: u64, one_event: bool, n: usize) -> Vec<Event> {
    let mut events = Vec::with_capacity(n);
    for (m, reader) in reads(shape, true, 7, n / per as usize) {
        let msgs = (0..per).map(|k| m - k * shape.groups);
        let read = |msgs: Vec<Id>| {
            let mut e = read_event(shape, m, reader);
            if let Event::MessageRead(r) = &mut e {
                r.msg_ids = msgs;
            }
            e
        };
        if one_event {
            events.push(read(msgs.map(|k| format!("m{k}").into()).collect()));
        } else {
            events.extend(msgs.map(|k| read(vec![format!("m{k}").into()])));
        }
    }
    events
}

/// The state with every group and message in place.
fn live_state(shape: Shape, settings: &SettingsTable, limits: &Limits) -> PartitionState {
    let mut state = PartitionState::new();
    let mut fx = Effects::default();
    for g in 0..shape.groups {
        let e = Event::GroupMembers(GroupMembers {
            app_id: APP.into(),
            group_id: format!("g{g}").into(),
            op: MembersOp::Snapshot,
            group_type: Some(GroupType::Work),
            members: (0..GROUP_SIZE).map(|k| Id::from(format!("u{}", member(g, k)))).collect(),
            at: 1,
        });
        state.apply(settings, limits, &e, 1, &mut fx);
    }
    for m in 0..shape.messages {
        let g = m % shape.groups;
        let e = Event::MessageSent(MessageSent {
            app_id: APP.into(),
            msg_id: format!("m{m}").into(),
            sender: format!("u{}", member(g, 0)).into(),
            conversation: Conversation::Group { group_id: format!("g{g}").into() },
            need_read_receipt: true,
            sent_at: 1,
        });
        state.apply(settings, limits, &e, 1, &mut fx);
    }
    let mut deltas = DeltaBuffer::new();
    flush(&mut state, settings, &mut deltas);
    state
}

/// The naive fold: a set of readers per message, a count bumped when a
/// reader is new, and the changed messages collected per flush window.
#[derive(Default)]
struct NaiveFold {
    readers: HashMap<u64, HashSet<u32>>,
    counts: HashMap<u64, u32>,
    changed: HashSet<u64>,
}

impl NaiveFold {
    fn new() -> Self {
        let mut f = NaiveFold::default();
        for m in 0..MESSAGES {
            f.readers.insert(m, HashSet::new());
            f.counts.insert(m, 0);
        }
        f
    }

    fn read(&mut self, m: u64, reader: u32) {
        if let Some(set) = self.readers.get_mut(&m) {
            if set.insert(reader) {
                *self.counts.get_mut(&m).expect("counted") += 1;
                self.changed.insert(m);
            }
        }
    }

    fn flush(&mut self) {
        let deltas: Vec<(u64, u32)> = self.changed.drain().map(|m| (m, self.counts[&m])).collect();
        std::hint::black_box(deltas);
    }
}

/// The naive fold of the events themselves: the same sets and counts as
/// [`NaiveFold`], keyed by the events' string ids (a message's readers by
/// name), so that it looks ids up as receiptd must. Not one generic fold
/// with [`NaiveFold`]: this one looks up by borrowed strings and copies an
/// id only when it is new, where that one inserts straight away.
#[derive(Default)]
struct NaiveStringFold {
    readers: HashMap<String, HashSet<String>>,
    counts: HashMap<String, u32>,
    changed: HashSet<String>,
}

impl NaiveStringFold {
    fn new() -> Self {
        let mut f = NaiveStringFold::default();
        for m in 0..MESSAGES {
            f.readers.insert(format!("m{m}"), HashSet::new());
            f.counts.insert(format!("m{m}"), 0);
        }
        f
    }

    fn apply(&mut self, event: &Event) {
        let Event::MessageRead(r) = event else { return };
        for m in &r.msg_ids {
            if let Some(set) = self.readers.get_mut(m.as_str()) {
                if !set.contains(r.reader.as_str()) {
                    set.insert(r.reader.to_string());
                    *self.counts.get_mut(m.as_str()).expect("counted") += 1;
                    if !self.changed.contains(m.as_str()) {
                        self.changed.insert(m.to_string());
                    }
                }
            }
        }
    }

    fn flush(&mut self) {
        let deltas: Vec<(String, u32)> = self
            .changed
            .drain()
            .map(|m| {
                let count = self.counts[&m];
                (m, count)
            })
            .collect();
        std::hint::black_box(deltas);
    }
}

fn reads_bench(c: &mut Criterion) {
    let settings = SettingsTable::default();
    let limits = Limits::default();
    let mut group = timed_group(c, "reads");
    for (name, hot) in [("hot_window", true), ("uniform_1m_messages", false)] {
        let numbers = reads(TIMED, hot, 7, CHUNK * CHUNKS);
        let events: Vec<Event> = numbers.iter().map(|&(m, r)| read_event(TIMED, m, r)).collect();

        bench_folds(&mut group, name, &events, || live_state(TIMED, &settings, &limits), &settings, &limits);

        let mut naive = NaiveFold::new();
        bench_naive(&mut group, format!("naive_hashmap/{name}"), &numbers, |&(m, r), flush| {
            naive.read(m, r as u32);
            if flush {
                naive.flush();
            }
        });
        let mut naive = NaiveStringFold::new();
        bench_naive(&mut group, format!("naive_string_ids/{name}"), &events, |e, flush| {
            naive.apply(e);
            if flush {
                naive.flush();
            }
        });
    }
    group.finish();
}

/// Times a naive fold of `items`, `CHUNK` an iteration, the chunks in
/// turn; `fold` is told to flush after every 1,000th item, as receiptd's
/// folds take their receipts.
fn bench_naive<T>(group: &mut BenchmarkGroup<'_, WallTime>, id: String, items: &[T], mut fold: impl FnMut(&T, bool)) {
    let mut next = 0;
    group.bench_function(id, |b| {
        b.iter_custom(|iters| {
            let started = Instant::now();
            for _ in 0..iters {
                let chunk = &items[next * CHUNK..(next + 1) * CHUNK];
                next = (next + 1) % CHUNKS;
                for (i, item) in chunk.iter().enumerate() {
                    fold(item, i % 1_000 == 999);
                }
            }
            started.elapsed()
        })
    });
}

/// The drain's mix after 300,000 events of warm-up, a fresh 100,000 an
/// iteration, one event at a time and looked up ahead as the worker folds
/// (each with a state of its own, fed the same events).
fn mix_bench(c: &mut Criterion) {
    let (settings, limits) = (SettingsTable::default(), Limits::default());
    let mut traffic = Traffic::new(TrafficShape::bench());
    let warm_up: Vec<Event> = traffic.take(300_000);
    let events: Vec<Event> = (0..CHUNK * CHUNKS).map(|_| traffic.next_event()).collect();
    let mut group = timed_group(c, "mix");
    let new_state = || {
        let mut state = PartitionState::new();
        fold_events(&mut state, &settings, &limits, &warm_up, false);
        state
    };
    bench_folds(&mut group, "drain_mix", &events, new_state, &settings, &limits);
    group.finish();
}

/// A group timing `CHUNK` events an iteration, for a few seconds.
fn timed_group<'a>(c: &'a mut Criterion, name: &str) -> BenchmarkGroup<'a, WallTime> {
    let mut group = c.benchmark_group(name);
    group.throughput(Throughput::Elements(CHUNK as u64));
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(5));
    group
}

/// Times folding `events`, `CHUNK` an iteration, the chunks in turn (from
/// the first again once all are folded: reads then find their messages
/// read already), into a state `new_state` makes: one event at a time
/// (`receiptd/{name}`), then looked up ahead as the worker folds
/// (`receiptd_prefetched/{name}`), each into a state of its own.
fn bench_folds(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    events: &[Event],
    new_state: impl Fn() -> PartitionState,
    settings: &SettingsTable,
    limits: &Limits,
) {
    for (fold, prefetch) in [("receiptd", false), ("receiptd_prefetched", true)] {
        let mut state = new_state();
        let mut next = 0;
        group.bench_function(format!("{fold}/{name}"), |b| {
            b.iter_custom(|iters| {
                let started = Instant::now();
                for _ in 0..iters {
                    let chunk = &events[next * CHUNK..(next + 1) * CHUNK];
                    next = (next + 1) % CHUNKS;
                    fold_events(&mut state, settings, limits, chunk, prefetch);
                }
                started.elapsed()
            })
        });
    }
}

/// Folds `events`, taking receipts every 1,000 message reads (a read of
/// several messages counts each; any other event counts one).
/// With `prefetch`, as the worker folds a batch: [`PREFETCH_AHEAD`] events
/// looked up (`PartitionState::prefetch`), then folded with what that found
/// (`PartitionState::apply_ahead`).
#[inline(always)]
fn fold_events(
    state: &mut PartitionState,
    settings: &SettingsTable,
    limits: &Limits,
    events: &[Event],
    prefetch: bool,
) {
    Folder::default().fold(state, settings, limits, events, prefetch)
}

/// [`fold_events`]'s effects, receipts and count since the last flush,
/// kept across calls for a fold fed in pieces (the `switching` cases).
#[derive(Default)]
struct Folder {
    fx: Effects,
    deltas: DeltaBuffer,
    since_flush: usize,
}

impl Folder {
    #[inline(always)]
    fn fold(
        &mut self,
        state: &mut PartitionState,
        settings: &SettingsTable,
        limits: &Limits,
        events: &[Event],
        prefetch: bool,
    ) {
        for run in events.chunks(PREFETCH_AHEAD) {
            let mut ahead = [ReadAhead::NONE; PREFETCH_AHEAD];
            if prefetch {
                for (e, ahead) in run.iter().zip(&mut ahead) {
                    *ahead = state.prefetch(e);
                }
            }
            for (e, ahead) in run.iter().zip(ahead) {
                state.apply_ahead(settings, limits, e, ahead, 2, &mut self.fx);
                self.since_flush += match e {
                    Event::MessageRead(r) => r.msg_ids.len(),
                    _ => 1,
                };
                if self.since_flush >= 1_000 {
                    flush(state, settings, &mut self.deltas);
                    self.since_flush = 0;
                }
            }
        }
    }
}

/// What callgrind counts (`benches/counted.sh` names it): not inlined, so
/// that the count starts and stops here; the warm-up inlines `fold_events`
/// instead of calling this.
#[inline(never)]
fn counted_fold(
    state: &mut PartitionState,
    settings: &SettingsTable,
    limits: &Limits,
    events: &[Event],
    prefetch: bool,
) {
    fold_events(state, settings, limits, events, prefetch)
}

/// The `switching` case: [`counted_fold`] with a random member of the big
/// group switching receipts before every 100th event (off, then on again
/// at the next), as a user does in the app's settings.
#[inline(never)]
fn counted_fold_switching(
    state: &mut PartitionState,
    settings: &mut SettingsTable,
    limits: &Limits,
    events: &[Event],
    prefetch: bool,
) {
    let mut rng = Rng::new(11);
    let mut off: Option<String> = None;
    // One folder throughout, so that receipts are still taken every 1,000
    // message reads.
    let mut folder = Folder::default();
    for (i, run) in events.chunks(100).enumerate() {
        let (user, on) = match off.take() {
            Some(user) => (user, true),
            None => (format!("u{}", 1 + rng.below(BIG_GROUP - 1)), false),
        };
        if !on {
            off = Some(user.clone());
        }
        let at = i as u64;
        settings.apply(Setting::UserSettings(UserSettings { app_id: APP.into(), user, read_receipts: on, at }));
        folder.fold(state, settings, limits, run, prefetch);
    }
}

/// `e` with its message ids as Tencent IM forms them (38 bytes here).
fn long_msg_ids(mut e: Event) -> Event {
    let long = |id: &mut Id| *id = Id::from(format!("144115233874815003-1608262010-{id}"));
    match &mut e {
        Event::MessageSent(s) => long(&mut s.msg_id),
        Event::MessageRevoked(r) => long(&mut r.msg_id),
        Event::MessageRead(r) => r.msg_ids.iter_mut().for_each(long),
        Event::GroupMembers(_) | Event::ConversationRead(_) => {}
    }
    e
}

/// Events counted per case.
const COUNTED_EVENTS: usize = 200_000;

/// One pass of 200,000 events, for callgrind (see the module docs).
fn counted(case: &str) {
    // Any case with `_prefetched`: its events looked up ahead, as the
    // worker folds them.
    let (case, prefetch) = match case.strip_suffix("_prefetched") {
        Some(case) => (case, true),
        None => (case, false),
    };
    let (mut settings, limits) = (SettingsTable::default(), Limits::default());
    if case == "mix_config" {
        let app_id = TrafficShape::bench().app_id;
        settings.apply(Setting::AppConfig(AppConfig::defaults(&app_id)));
        let off = UserSettings { app_id, user: "private-user".into(), read_receipts: false, at: 0 };
        settings.apply(Setting::UserSettings(off));
    }
    let (mut state, events): (PartitionState, Vec<Event>) = match case {
        "hot" | "uniform" => {
            let reads = reads(COUNTED, case == "hot", 7, COUNTED_EVENTS);
            (live_state(COUNTED, &settings, &limits), reads.iter().map(|&(m, r)| read_event(COUNTED, m, r)).collect())
        }
        "mix" | "mix_config" | "mix_long_msg_ids" | "mix_read_batch" => {
            let ids: fn(Event) -> Event = if case == "mix_long_msg_ids" { long_msg_ids } else { |e| e };
            let read_batch = if case == "mix_read_batch" { 10 } else { 1 };
            let mut traffic = Traffic::new(TrafficShape { read_batch, ..TrafficShape::bench() });
            let mut state = PartitionState::new();
            // `take` starts with the setup (the groups' snapshots).
            let warm_up: Vec<Event> = traffic.take(300_000).into_iter().map(ids).collect();
            fold_events(&mut state, &settings, &limits, &warm_up, prefetch);
            (state, (0..COUNTED_EVENTS).map(|_| ids(traffic.next_event())).collect())
        }
        "ten_per_read" | "one_per_read" => {
            let reads = reads_of_several(COUNTED, 10, case == "ten_per_read", COUNTED_EVENTS);
            (live_state(COUNTED, &settings, &limits), reads)
        }
        "big_messages" => (big_group_state(&settings, &limits), big_message_reads()),
        "churn" | "switching" | "churn_switching" => {
            let mut rng = Rng::new(7);
            let mut state = big_group_state(&settings, &limits);
            let warm_up: Vec<Event> = (0..CHURN_WARM_UP).map(|_| big_group_read(&mut rng)).collect();
            fold_events(&mut state, &settings, &limits, &warm_up, prefetch);
            let events = match case {
                "switching" => (0..COUNTED_EVENTS).map(|_| big_group_read(&mut rng)).collect(),
                _ => (0..COUNTED_EVENTS).map(|i| big_group_churn(&mut rng, i)).collect(),
            };
            (state, events)
        }
        other => panic!(
            "RECEIPTD_FOLD_COUNTED={other}: expected hot, uniform, mix, mix_config, mix_long_msg_ids, mix_read_batch, \
             ten_per_read, one_per_read, churn, switching, churn_switching or big_messages, each perhaps with \
             _prefetched"
        ),
    };
    let started = Instant::now();
    if case.ends_with("switching") {
        counted_fold_switching(&mut state, &mut settings, &limits, &events, prefetch);
    } else {
        counted_fold(&mut state, &settings, &limits, &events, prefetch);
    }
    let elapsed = started.elapsed();
    let message_reads: usize =
        events.iter().map(|e| if let Event::MessageRead(r) = e { r.msg_ids.len() } else { 0 }).sum();
    let reads = events.iter().filter(|e| matches!(e, Event::MessageRead(_))).count();
    println!(
        "folded {} {case} events, {reads} reads of {message_reads} messages, in {:.1} ms ({:.0} ns an event; \
         timed only when run without valgrind)",
        events.len(),
        elapsed.as_secs_f64() * 1e3,
        elapsed.as_nanos() as f64 / events.len() as f64
    );
}

/// Members of the `churn` case's group.
const BIG_GROUP: u64 = 100_000;
/// Its live messages.
const BIG_GROUP_MESSAGES: u64 = 100;
/// Reads folded before the count: about 2,000 readers a message.
const CHURN_WARM_UP: usize = 200_000;

/// One group of [`BIG_GROUP`] members, `u0` to `u99999`, and
/// [`BIG_GROUP_MESSAGES`] messages `u0` sent to it.
fn big_group_state(settings: &SettingsTable, limits: &Limits) -> PartitionState {
    let mut state = PartitionState::new();
    let mut fx = Effects::default();
    let e = Event::GroupMembers(GroupMembers {
        app_id: APP.into(),
        group_id: "big".into(),
        op: MembersOp::Snapshot,
        group_type: Some(GroupType::Work),
        members: (0..BIG_GROUP).map(|k| Id::from(format!("u{k}"))).collect(),
        at: 1,
    });
    state.apply(settings, limits, &e, 1, &mut fx);
    for m in 0..BIG_GROUP_MESSAGES {
        let e = Event::MessageSent(MessageSent {
            app_id: APP.into(),
            msg_id: format!("m{m}").into(),
            sender: "u0".into(),
            conversation: Conversation::Group { group_id: "big".into() },
            need_read_receipt: true,
            sent_at: 1,
        });
        state.apply(settings, limits, &e, 1, &mut fx);
    }
    state
}

/// The `big_messages` case's reads: each of the big group's first 4
/// messages read by 50,000 distinct members, in a random order
/// interleaving the messages.
fn big_message_reads() -> Vec<Event> {
    let mut rng = Rng::new(7);
    let mut reads: Vec<(u64, u64)> = Vec::with_capacity(COUNTED_EVENTS);
    for m in 0..4 {
        let mut members: Vec<u64> = (1..BIG_GROUP).collect();
        for k in 0..COUNTED_EVENTS / 4 {
            let pick = k + rng.below(members.len() as u64 - k as u64) as usize;
            members.swap(k, pick);
            reads.push((m, members[k]));
        }
    }
    for k in (1..reads.len()).rev() {
        reads.swap(k, rng.below(k as u64 + 1) as usize);
    }
    reads.into_iter().map(|(m, reader)| big_group_event(read_event(COUNTED, m, reader))).collect()
}

/// A random member's read of a random message of the big group.
fn big_group_read(rng: &mut Rng) -> Event {
    big_group_event(read_event(COUNTED, rng.below(BIG_GROUP_MESSAGES), 1 + rng.below(BIG_GROUP - 1)))
}

/// `read` in the big group.
fn big_group_event(mut read: Event) -> Event {
    if let Event::MessageRead(r) = &mut read {
        r.conversation = Conversation::Group { group_id: "big".into() };
    }
    read
}

/// The `churn` case's `i`th event: every 100th a membership change (a
/// random member leaves, or a newcomer joins, in turn), the rest reads.
fn big_group_churn(rng: &mut Rng, i: usize) -> Event {
    if i % 100 != 0 {
        return big_group_read(rng);
    }
    let (op, member) = match i % 200 {
        0 => (MembersOp::Leave, format!("u{}", 1 + rng.below(BIG_GROUP - 1))),
        _ => (MembersOp::Join, format!("newcomer{i}")),
    };
    Event::GroupMembers(GroupMembers {
        app_id: APP.into(),
        group_id: "big".into(),
        op,
        group_type: None,
        members: vec![member.into()],
        at: 2,
    })
}

/// Events folded between two stagings in the counted stage case: about
/// what the drain bench folds in one 50 ms flush window.
const STAGE_WINDOW: usize = 50_000;

/// What callgrind counts for `benches/counted.sh stage`: one flush's
/// staging, receipts taken and entities encoded into `batch`.
#[inline(never)]
fn counted_stage(
    state: &mut PartitionState,
    settings: &SettingsTable,
    deltas: &mut DeltaBuffer,
    batch: &mut receiptd_store::BatchBuffer,
) -> usize {
    let mut writer = receiptd_store::EntityWriter::new(batch, 0);
    let staged = state.flush_changes(settings, deltas, |key, entity| writer.stage(key, entity));
    for record in deltas.drain() {
        deltas.recycle(std::hint::black_box(record).receipts);
    }
    staged
}

/// What callgrind counts for `mix_written` besides the staging: the
/// batch's write, as the store writer thread makes it.
#[inline(never)]
fn counted_stage_write(store: &receiptd_store::Store, batch: receiptd_store::BatchBuffer) {
    store.write(batch).expect("the store writes");
}

/// The drain's mix after 300,000 events of warm-up, folded a window at a
/// time, each window's changes staged: the counted and the timed staging.
struct Staging {
    settings: SettingsTable,
    limits: Limits,
    traffic: Traffic,
    state: PartitionState,
    deltas: DeltaBuffer,
    batch: receiptd_store::BatchBuffer,
}

impl Staging {
    fn new(read_batch: usize) -> Self {
        let (settings, limits) = (SettingsTable::default(), Limits::default());
        let mut traffic = Traffic::new(TrafficShape { read_batch, ..TrafficShape::bench() });
        let (mut state, mut deltas) = (PartitionState::new(), DeltaBuffer::new());
        let warm_up: Vec<Event> = traffic.take(300_000);
        fold_events(&mut state, &settings, &limits, &warm_up, false);
        flush(&mut state, &settings, &mut deltas);
        Staging { settings, limits, traffic, state, deltas, batch: receiptd_store::BatchBuffer::default() }
    }

    /// Folds the next window, nothing staged.
    fn fold_window(&mut self) {
        let mut fx = Effects::default();
        for _ in 0..STAGE_WINDOW {
            let e = self.traffic.next_event();
            self.state.apply(&self.settings, &self.limits, &e, 2, &mut fx);
        }
    }

    /// Stages the window's changes into the batch; returns how many.
    fn stage(&mut self) -> usize {
        counted_stage(&mut self.state, &self.settings, &mut self.deltas, &mut self.batch)
    }
}

/// The drain's mix folded in windows, each window's changes staged (see
/// the module docs).
fn counted_staging(case: &str) {
    let read_batch = match case {
        "mix" | "mix_written" => 1,
        "mix_read_batch" => 10,
        "big_messages" => return counted_staging_big_messages(),
        other => panic!("RECEIPTD_STAGE_COUNTED={other}: expected mix, mix_written, mix_read_batch or big_messages"),
    };
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = (case == "mix_written")
        .then(|| receiptd_store::Store::open(dir.path(), &receiptd_store::StoreOptions::default()).expect("a store"));
    let mut run = Staging::new(read_batch);
    let (mut staged, mut bytes) = (0, 0);
    for _ in 0..COUNTED_EVENTS / STAGE_WINDOW {
        run.fold_window();
        staged += run.stage();
        bytes += run.batch.size_in_bytes();
        match &store {
            // As the worker does: the next batch reserves the last one's size.
            Some(store) => {
                let next = receiptd_store::BatchBuffer::with_capacity(run.batch.size_in_bytes());
                counted_stage_write(store, std::mem::replace(&mut run.batch, next))
            }
            None => run.batch.clear(),
        }
    }
    println!("staged {staged} entities ({bytes} bytes of write batch) for {COUNTED_EVENTS} {case} events");
}

/// Flush windows of the `big_messages` staging: 1,000 reads of four
/// messages, each read by tens of thousands (about 20,000 reads a second
/// of one message, at the engine's 50 ms flush window).
const BIG_MESSAGES_WINDOW: usize = 1_000;

/// The `big_messages` staging: the fold case's reads folded in windows of
/// [`BIG_MESSAGES_WINDOW`], each window's changes staged and written
/// into a store (RocksDB's write and the encoding of every message
/// counted): what a flush costs, and writes, when its messages have tens
/// of thousands of readers. Prints the bytes of write batch and the
/// wall time (when run without valgrind).
fn counted_staging_big_messages() {
    let (settings, limits) = (SettingsTable::default(), Limits::default());
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = receiptd_store::Store::open(dir.path(), &receiptd_store::StoreOptions::default()).expect("a store");
    let (mut state, events) = (big_group_state(&settings, &limits), big_message_reads());
    let (mut deltas, mut batch) = (DeltaBuffer::new(), receiptd_store::BatchBuffer::default());
    let restored = std::env::var_os("RECEIPTD_STAGE_RESTORED").is_some();
    if restored {
        // The group and its messages stored first (not counted), for the
        // partition to restore. The flushes' writes take about twice as
        // long then (RocksDB's, with 100,000 member slots stored): compare
        // their times only between runs of the same mode.
        let mut writer = receiptd_store::EntityWriter::new(&mut batch, 0);
        state.flush_changes(&settings, &mut deltas, |key, entity| writer.stage(key, entity));
        store.write(std::mem::take(&mut batch)).expect("the store writes");
    } else {
        flush(&mut state, &settings, &mut deltas);
    }
    let (mut staged, mut bytes, mut largest, mut spent) = (0, 0, 0, Duration::ZERO);
    let mut fx = Effects::default();
    for window in events.chunks(BIG_MESSAGES_WINDOW) {
        for e in window {
            state.apply(&settings, &limits, e, 2, &mut fx);
        }
        let started = Instant::now();
        staged += counted_stage(&mut state, &settings, &mut deltas, &mut batch);
        let size = batch.size_in_bytes();
        (bytes, largest) = (bytes + size, largest.max(size));
        let next = receiptd_store::BatchBuffer::with_capacity(size);
        counted_stage_write(&store, std::mem::replace(&mut batch, next));
        spent += started.elapsed();
    }
    println!(
        "staged {staged} entities ({bytes} bytes of write batch, {:.1} a read, {largest} at most a flush) for {} \
         big_messages reads, in {:.1} ms ({:.0} ns a read; timed only when run without valgrind)",
        bytes as f64 / events.len() as f64,
        events.len(),
        spent.as_secs_f64() * 1e3,
        spent.as_nanos() as f64 / events.len() as f64
    );
    if restored {
        // The partition restored, as a restarted worker restores it.
        let mut took: Vec<Duration> = (0..5)
            .map(|_| {
                let started = Instant::now();
                let (restored, _) = store.load_partition(0).expect("the partition restores");
                let took = started.elapsed();
                assert_eq!(restored.message_count(), state.message_count());
                took
            })
            .collect();
        took.sort();
        println!("restored the partition in {:.1} ms (median of 5 loads)", took[2].as_secs_f64() * 1e3);
    }
}

/// `stage/mix_50k_window`: the staging of one window of the drain's mix,
/// timed (the fold of the window is not).
fn stage_bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("stage");
    group.throughput(Throughput::Elements(STAGE_WINDOW as u64));
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(5));
    let mut run = Staging::new(1);
    group.bench_function("mix_50k_window", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                run.fold_window();
                let started = Instant::now();
                std::hint::black_box(run.stage());
                spent += started.elapsed();
                run.batch.clear();
            }
            spent
        })
    });
    group.finish();
}

criterion_group!(benches, demo_mix, reads_bench, mix_bench, stage_bench);

fn main() {
    if let Ok(case) = std::env::var("RECEIPTD_FOLD_COUNTED") {
        counted(&case);
        return;
    }
    if let Ok(case) = std::env::var("RECEIPTD_STAGE_COUNTED") {
        counted_staging(&case);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
