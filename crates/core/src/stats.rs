//! Counters the fold keeps by outcome and reason; the worker exports them as
//! metrics. Fixed arrays, not maps: the fold bumps one per event.

/// What happened to one event (or, for `message_read`, one named message).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// It changed state.
    Applied,
    /// A read held until its message arrives.
    Held,
    /// It changed nothing; see [`Ignored`] for why.
    Ignored,
}

/// Why an event, or one read of a `message_read`, changed nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Ignored {
    /// The reader is the message's sender.
    Sender,
    /// The reader is not in the message's audience.
    NotInAudience,
    /// The message did not ask for read receipts.
    NoReceiptRequested,
    /// The same reader already read the message.
    Duplicate,
    /// The message was revoked.
    Revoked,
    /// The message is past its app's retention.
    Expired,
    /// The group's type has receipts disabled for the app.
    GroupTypeDisabled,
    /// The app has C2C receipts disabled.
    C2cDisabled,
    /// The message names a group we have no membership for.
    UnknownGroup,
    /// A read waited for its message longer than the hold window.
    HoldExpired,
    /// The hold buffer was full.
    HoldOverflow,
    /// A conversation read mark older than the stored one.
    StaleMark,
    /// A second `message_sent` for a message already known.
    DuplicateMessage,
    /// A membership change for a group we know nothing of (leave, dismiss).
    UnknownTarget,
    /// A membership change for a group at [`crate::LAST_EPOCH`].
    EpochsExhausted,
}

impl Ignored {
    /// Every reason, in metric order.
    pub const ALL: [Ignored; 15] = [
        Ignored::Sender,
        Ignored::NotInAudience,
        Ignored::NoReceiptRequested,
        Ignored::Duplicate,
        Ignored::Revoked,
        Ignored::Expired,
        Ignored::GroupTypeDisabled,
        Ignored::C2cDisabled,
        Ignored::UnknownGroup,
        Ignored::HoldExpired,
        Ignored::HoldOverflow,
        Ignored::StaleMark,
        Ignored::DuplicateMessage,
        Ignored::UnknownTarget,
        Ignored::EpochsExhausted,
    ];

    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Ignored::Sender => "sender",
            Ignored::NotInAudience => "not_in_audience",
            Ignored::NoReceiptRequested => "no_receipt_requested",
            Ignored::Duplicate => "duplicate",
            Ignored::Revoked => "revoked",
            Ignored::Expired => "expired",
            Ignored::GroupTypeDisabled => "group_type_disabled",
            Ignored::C2cDisabled => "c2c_disabled",
            Ignored::UnknownGroup => "unknown_group",
            Ignored::HoldExpired => "hold_expired",
            Ignored::HoldOverflow => "hold_overflow",
            Ignored::StaleMark => "stale_mark",
            Ignored::DuplicateMessage => "duplicate_message",
            Ignored::UnknownTarget => "unknown_target",
            Ignored::EpochsExhausted => "epochs_exhausted",
        }
    }
}

/// Event kinds, in metric order (index of [`FoldStats::events`]).
pub const EVENT_KINDS: [&str; 5] =
    ["group_members", "message_sent", "message_read", "conversation_read", "message_revoked"];

/// Counters accumulated by the fold since the caller last took them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FoldStats {
    /// Events by kind (see [`EVENT_KINDS`]) and outcome (applied, held, ignored).
    pub events: [[u64; 3]; 5],
    /// Ignored reads and events by reason (see [`Ignored::ALL`]).
    pub ignored: [u64; 15],
    /// Reads that were recorded but hidden (private, or receipts off).
    pub hidden_reads: u64,
    /// Messages dropped by retention.
    pub expired_messages: u64,
}

impl FoldStats {
    pub(crate) fn event(&mut self, kind: usize, outcome: Outcome) {
        self.events[kind][outcome as usize] += 1;
    }

    pub(crate) fn ignore(&mut self, reason: Ignored) {
        self.ignored[reason as usize] += 1;
    }

    /// Count for one reason.
    pub fn ignored(&self, reason: Ignored) -> u64 {
        self.ignored[reason as usize]
    }

    /// Adds `other` into `self`.
    pub fn merge(&mut self, other: &FoldStats) {
        for (a, b) in self.events.iter_mut().zip(other.events.iter()) {
            for (x, y) in a.iter_mut().zip(b.iter()) {
                *x += y;
            }
        }
        for (x, y) in self.ignored.iter_mut().zip(other.ignored.iter()) {
            *x += y;
        }
        self.hidden_reads += other.hidden_reads;
        self.expired_messages += other.expired_messages;
    }
}
