//! Read-only questions the query API asks of a partition's
//! [`PartitionView`], while the fold goes on. An answer about a message
//! holds that message's shard, then its group's, for as long as it reads
//! them (the fold locks in the same order, one event at a time), so it never
//! sees half a fold, and a count never contradicts the list it summarizes.

use crate::state::{AppView, MessageState, MessageTarget, PartitionView, ReadMark, Tracking};
use crate::{AppSettings, SettingsTable};
use parking_lot::MappedRwLockReadGuard;
use receiptd_wire::{Conversation, Id, Receipt};

/// Why a message's receipt cannot be given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryRefusal {
    /// Unknown here, revoked, untracked, past retention, or in another
    /// conversation than the one named.
    NotFound,
    /// The requester is not the message's sender.
    Forbidden,
    /// The requester's receipts are off and the app is reciprocal.
    ReceiptsDisabled,
}

impl QueryRefusal {
    /// The contract's error code.
    pub fn code(self) -> &'static str {
        match self {
            QueryRefusal::NotFound => "not_found",
            QueryRefusal::Forbidden => "forbidden",
            QueryRefusal::ReceiptsDisabled => "receipts_disabled",
        }
    }
}

/// Which members a page lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberFilter {
    /// Revealed readers, with `read_at`.
    Read,
    /// Eligible members not revealed as readers.
    Unread,
}

/// One page of a member list, in ordinal order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberPage {
    /// `(user, read_at)`; `read_at` only for [`MemberFilter::Read`].
    pub members: Vec<(String, Option<u64>)>,
    /// The ordinal to continue after, or `None` when finished.
    pub next: Option<u32>,
}

impl PartitionView {
    /// The receipt of a message as its sender may see it now.
    pub fn receipt(
        &self,
        settings: &SettingsTable,
        app: &str,
        msg_id: &str,
        requester: &str,
        conversation: &Conversation,
    ) -> Result<Receipt, QueryRefusal> {
        let asked = Asked { settings: settings.app(app), watermark: self.watermark(), msg_id, requester };
        self.app(app).ok_or(QueryRefusal::NotFound)?.receipt(&asked, conversation)
    }

    /// A page of a group message's read or unread members, after ordinal
    /// `after` (exclusive), at most `count` long.
    #[allow(clippy::too_many_arguments)]
    pub fn member_page(
        &self,
        settings: &SettingsTable,
        app: &str,
        group_id: &str,
        msg_id: &str,
        requester: &str,
        filter: MemberFilter,
        after: Option<u32>,
        count: usize,
    ) -> Result<MemberPage, QueryRefusal> {
        let asked = Asked { settings: settings.app(app), watermark: self.watermark(), msg_id, requester };
        self.app(app).ok_or(QueryRefusal::NotFound)?.member_page(&asked, group_id, filter, after, count)
    }
}

/// One question about one message.
struct Asked<'a> {
    /// The app's settings, found once per question.
    settings: AppSettings<'a>,
    watermark: u64,
    msg_id: &'a str,
    requester: &'a str,
}

impl AppView {
    /// The message, if known here and asked about under its own conversation
    /// (relative to the requester, who must be its sender).
    fn located(
        &self,
        msg_id: &str,
        requester: &str,
        conversation: &Conversation,
    ) -> Result<MappedRwLockReadGuard<'_, MessageState>, QueryRefusal> {
        let m = self.messages.get(msg_id).ok_or(QueryRefusal::NotFound)?;
        let same = match (&m.target, conversation) {
            (MessageTarget::Group { group_id, .. }, Conversation::Group { group_id: g }) => **group_id == **g,
            (MessageTarget::C2c { peer }, Conversation::C2c { peer: p }) => {
                **peer == **p || (**p == *m.sender && **peer == *requester)
            }
            _ => false,
        };
        if !same {
            return Err(QueryRefusal::NotFound);
        }
        Ok(MappedRwLockReadGuard::map(m, |m| &**m))
    }

    fn queryable(
        &self,
        asked: &Asked<'_>,
        conversation: &Conversation,
    ) -> Result<MappedRwLockReadGuard<'_, MessageState>, QueryRefusal> {
        let Asked { settings, watermark, msg_id, requester } = *asked;
        let m = self.located(msg_id, requester, conversation)?;
        if m.tracking != Tracking::Tracked || m.sent_at.saturating_add(settings.retention_ms()) < watermark {
            return Err(QueryRefusal::NotFound);
        }
        if *m.sender != *requester {
            return Err(QueryRefusal::Forbidden);
        }
        if !settings.may_receive(requester) {
            return Err(QueryRefusal::ReceiptsDisabled);
        }
        Ok(m)
    }

    fn receipt(&self, asked: &Asked<'_>, conversation: &Conversation) -> Result<Receipt, QueryRefusal> {
        let m = self.queryable(asked, conversation)?;
        let (read, unread) = crate::fold::counts(asked.settings, &self.groups, &m);
        let msg_id = asked.msg_id;
        Ok(match &m.target {
            MessageTarget::Group { group_id, .. } => {
                Receipt::group(msg_id.to_owned(), str::to_owned(group_id), read, unread, m.timestamp, m.version())
            }
            MessageTarget::C2c { peer } => {
                Receipt::c2c(msg_id.to_owned(), str::to_owned(peer), read > 0, m.timestamp, m.version())
            }
        })
    }

    fn member_page(
        &self,
        asked: &Asked<'_>,
        group_id: &str,
        filter: MemberFilter,
        after: Option<u32>,
        count: usize,
    ) -> Result<MemberPage, QueryRefusal> {
        let settings = asked.settings;
        let conversation = Conversation::Group { group_id: Id::from(group_id) };
        let m_guard = self.queryable(asked, &conversation)?;
        let m: &MessageState = &m_guard;
        let MessageTarget::Group { audience_epoch, .. } = &m.target else { return Err(QueryRefusal::NotFound) };
        let group_guard = self.groups.get(group_id).ok_or(QueryRefusal::NotFound)?;
        let group = &*group_guard;
        let revealed = |r: &ReadMark| !r.hidden && settings.receipts_on(group.users.name(r.ordinal));
        let start = after.map_or(0, |a| a + 1);
        let candidates: Box<dyn Iterator<Item = (u32, Option<u64>)> + '_> = match filter {
            MemberFilter::Read => {
                let reads = m.readers.iter_from(start, m.sent_at);
                Box::new(reads.filter(move |r| revealed(r)).map(|r| (r.ordinal, Some(r.read_at))))
            }
            MemberFilter::Unread => {
                let sender = group.ordinal(&m.sender);
                Box::new(
                    (start..group.users.len() as u32)
                        .filter(move |&o| group.member_since(o, *audience_epoch) && Some(o) != sender)
                        .filter(move |&o| !m.read_mark(o).is_some_and(|r| revealed(&r)))
                        .map(|o| (o, None)),
                )
            }
        };
        let mut candidates = candidates.peekable();
        let mut members = Vec::with_capacity(count.min(1024));
        let mut last = None;
        for (ordinal, read_at) in candidates.by_ref().take(count) {
            members.push((group.users.name(ordinal).to_owned(), read_at));
            last = Some(ordinal);
        }
        let finished = candidates.peek().is_none();
        Ok(MemberPage { members, next: if finished { None } else { last } })
    }
}
