//! The settings table: every app's `app_config` and every user's switch, as
//! read from the compacted `receipts.settings` topic. The fold only reads it.

use receiptd_wire::{AppConfig, GroupType, Setting};
use rustc_hash::FxHashMap;

/// App configs and user receipt switches, keyed by app.
#[derive(Debug, Clone, Default)]
pub struct SettingsTable {
    apps: FxHashMap<String, AppConfig>,
    /// (app, user) with receipts turned off. Users absent have them on.
    receipts_off: FxHashMap<String, rustc_hash::FxHashSet<String>>,
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
                if u.read_receipts {
                    off.remove(&u.user);
                } else {
                    off.insert(u.user);
                }
            }
        }
    }

    /// Whether C2C receipts are on for the app (default true).
    pub fn c2c_receipts(&self, app: &str) -> bool {
        self.apps.get(app).is_none_or(|c| c.c2c_receipts)
    }

    /// Whether receipts are on for a group type (default Work, Public, Meeting).
    pub fn group_type_enabled(&self, app: &str, group_type: GroupType) -> bool {
        match self.apps.get(app) {
            Some(c) => c.group_receipt_types.contains(&group_type),
            None => matches!(group_type, GroupType::Work | GroupType::Public | GroupType::Meeting),
        }
    }

    /// Whether a user whose receipts are off also gets none (default true).
    pub fn reciprocal_privacy(&self, app: &str) -> bool {
        self.apps.get(app).is_none_or(|c| c.reciprocal_privacy)
    }

    /// Retention in days (default 30).
    pub fn retention_days(&self, app: &str) -> u32 {
        self.apps.get(app).map_or(30, |c| c.retention_days)
    }

    /// Whether any user of the app has receipts off (the fold's fast path
    /// needs none to be).
    pub fn anyone_off(&self, app: &str) -> bool {
        self.receipts_off.get(app).is_some_and(|off| !off.is_empty())
    }

    /// Retention in milliseconds, the unit the fold's clock counts in.
    pub fn retention_ms(&self, app: &str) -> u64 {
        u64::from(self.retention_days(app)) * 86_400_000
    }

    /// Whether the user's reads may be revealed.
    pub fn receipts_on(&self, app: &str, user: &str) -> bool {
        self.receipts_off.get(app).is_none_or(|off| !off.contains(user))
    }

    /// Whether the user may receive receipts for their own messages.
    pub fn may_receive(&self, app: &str, user: &str) -> bool {
        !self.reciprocal_privacy(app) || self.receipts_on(app, user)
    }
}
