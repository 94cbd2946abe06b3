//! The settings table: every app's `app_config` and every user's switch, as
//! read from the compacted `receipts.settings` topic. The fold only reads it.

use receiptd_wire::{AppConfig, GroupType, Setting};
use rustc_hash::FxHashMap;

/// App configs and user receipt switches, keyed by app.
#[derive(Debug, Clone, Default)]
pub struct SettingsTable {
    apps: FxHashMap<String, AppConfig>,
    /// Each app's users with receipts turned off. Users absent have them on.
    receipts_off: FxHashMap<String, OffUsers>,
}

/// One app's users with receipts off, and how often that set has changed.
#[derive(Debug, Clone, Default)]
struct OffUsers {
    users: rustc_hash::FxHashSet<String>,
    /// Changes to `users` so far, saturating at `u32::MAX`: counts cached
    /// under one value are those of an unchanged set (see [`AppSettings::switches`]).
    switches: u32,
}

impl SettingsTable {
    /// Applies one settings record; the newest record per key wins, as in a
    /// compacted topic.
    pub fn apply(&mut self, setting: Setting) {
        match setting {
            Setting::AppConfig(c) => {
                self.apps.insert(c.app_id.clone(), c);
            }
            Setting::UserSettings(u) => {
                let off = self.receipts_off.entry(u.app_id).or_default();
                let changed = if u.read_receipts { off.users.remove(&u.user) } else { off.users.insert(u.user) };
                if changed {
                    off.switches = off.switches.saturating_add(1);
                }
            }
        }
    }

    /// One app's settings, looked up once for the questions that follow.
    /// The fold asks several per read (retention, the reader's switch,
    /// whether anyone is off); asked of the table, each hashed the app id
    /// again: a fifth of the fold's instructions once the app had a config
    /// and a user had switched.
    pub fn app(&self, app: &str) -> AppSettings<'_> {
        AppSettings { config: self.apps.get(app), off: self.receipts_off.get(app) }
    }

    /// Whether C2C receipts are on for the app (default true).
    pub fn c2c_receipts(&self, app: &str) -> bool {
        self.app(app).c2c_receipts()
    }

    /// Retention in milliseconds, the unit the fold's clock counts in.
    pub fn retention_ms(&self, app: &str) -> u64 {
        self.app(app).retention_ms()
    }

    /// Whether the user's reads may be revealed.
    pub fn receipts_on(&self, app: &str, user: &str) -> bool {
        self.app(app).receipts_on(user)
    }

    /// Whether the user may receive receipts for their own messages.
    pub fn may_receive(&self, app: &str, user: &str) -> bool {
        self.app(app).may_receive(user)
    }
}

/// One app's settings, from [`SettingsTable::app`]: its config (if it has
/// one) and its users with receipts off (if any), each found once. Every
/// default lives here.
#[derive(Debug, Clone, Copy)]
pub struct AppSettings<'a> {
    config: Option<&'a AppConfig>,
    /// `None` when no user of the app ever switched.
    off: Option<&'a OffUsers>,
}

impl AppSettings<'_> {
    /// Whether C2C receipts are on (default true).
    pub fn c2c_receipts(&self) -> bool {
        self.config.is_none_or(|c| c.c2c_receipts)
    }

    /// Whether receipts are on for a group type (default Work, Public, Meeting).
    pub fn group_type_enabled(&self, group_type: GroupType) -> bool {
        match self.config {
            Some(c) => c.group_receipt_types.contains(&group_type),
            None => matches!(group_type, GroupType::Work | GroupType::Public | GroupType::Meeting),
        }
    }

    /// Whether a user whose receipts are off also gets none (default true).
    pub fn reciprocal_privacy(&self) -> bool {
        self.config.is_none_or(|c| c.reciprocal_privacy)
    }

    /// Retention in days (default 30).
    pub fn retention_days(&self) -> u32 {
        self.config.map_or(30, |c| c.retention_days)
    }

    /// Retention in milliseconds, the unit the fold's clock counts in.
    pub fn retention_ms(&self) -> u64 {
        u64::from(self.retention_days()) * 86_400_000
    }

    /// Whether any user has receipts off (the fold's fast path needs none to be).
    pub fn anyone_off(&self) -> bool {
        self.off.is_some_and(|off| !off.users.is_empty())
    }

    /// Whether the user's reads may be revealed.
    pub fn receipts_on(&self, user: &str) -> bool {
        self.off.is_none_or(|off| !off.users.contains(user))
    }

    /// How often the set of users with receipts off has changed, or `None`
    /// once that count has saturated. Two equal values mean the same set, so
    /// counts that depend on who is off may be cached under it.
    pub fn switches(&self) -> Option<u32> {
        let switches = self.off.map_or(0, |off| off.switches);
        (switches != u32::MAX).then_some(switches)
    }

    /// Whether the user may receive receipts for their own messages.
    pub fn may_receive(&self, user: &str) -> bool {
        !self.reciprocal_privacy() || self.receipts_on(user)
    }
}
