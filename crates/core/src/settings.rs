//! The settings table: every app's `app_config` and every user's switch, as
//! read from the compacted `receipts.settings` topic. The fold only reads it.

use crate::by_id::{ById, Named};
use crate::sharded::hash_of;
use hashbrown::HashTable;
use receiptd_wire::same_str;
use receiptd_wire::{AppConfig, GroupType, Setting};

/// App configs and user receipt switches, keyed by app.
#[derive(Debug, Clone, Default)]
pub struct SettingsTable {
    /// Every app with a config or a user who switched: one lookup finds
    /// both, the app answered last first, and ids compare without `memcmp`
    /// (two maps of owned strings, each looked up, were 14% of the fold's
    /// instructions once an app had its config and a user had switched).
    apps: ById<AppEntry>,
}

/// One app's settings as stored.
#[derive(Debug, Clone)]
struct AppEntry {
    app_id: String,
    config: Option<AppConfig>,
    /// Its users with receipts turned off. Users absent have them on.
    off: OffUsers,
}

impl Named for AppEntry {
    fn name(&self) -> &str {
        &self.app_id
    }
}

/// Switches a user's receipts kept per app, latest last, so that counts
/// cached before them can be brought up to date (see
/// [`AppSettings::switched_after`]).
const SWITCHES_KEPT: usize = 64;

/// One app's users with receipts off, and how often that set has changed.
#[derive(Debug, Clone, Default)]
struct OffUsers {
    /// Hashed by the user id.
    users: HashTable<String>,
    /// Changes to `users` so far, saturating at `u32::MAX`: counts cached
    /// under one value are those of an unchanged set (see [`AppSettings::switches`]).
    switches: u32,
    /// The latest changes, oldest first: who, and whether now off. The
    /// last is change number `switches`.
    recent: std::collections::VecDeque<(String, bool)>,
}

impl OffUsers {
    fn contains(&self, user: &str) -> bool {
        !self.users.is_empty() && self.users.find(hash_of(user), |u| same_str(u, user)).is_some()
    }

    /// Turns `user`'s receipts off (`off`) or on; whether that changed the set.
    fn switch(&mut self, user: String, off: bool) -> bool {
        let hash = hash_of(user.as_str());
        match self.users.entry(hash, |u| same_str(u, &user), |u| hash_of(u.as_str())) {
            hashbrown::hash_table::Entry::Occupied(present) if !off => drop(present.remove()),
            hashbrown::hash_table::Entry::Vacant(absent) if off => drop(absent.insert(user.clone())),
            _ => return false,
        }
        self.switches = self.switches.saturating_add(1);
        if self.recent.len() == SWITCHES_KEPT {
            self.recent.pop_front();
        }
        self.recent.push_back((user, off));
        true
    }
}

impl SettingsTable {
    /// Applies one settings record; the newest record per key wins, as in a
    /// compacted topic.
    pub fn apply(&mut self, setting: Setting) {
        match setting {
            Setting::AppConfig(c) => {
                let entry = self.entry(&c.app_id);
                entry.config = Some(c);
            }
            Setting::UserSettings(u) => {
                self.entry(&u.app_id).off.switch(u.user, !u.read_receipts);
            }
        }
    }

    /// The app's entry, added empty if it has none.
    fn entry(&mut self, app: &str) -> &mut AppEntry {
        self.apps.get_or_insert_with(app, || AppEntry {
            app_id: app.to_owned(),
            config: None,
            off: OffUsers::default(),
        })
    }

    /// One app's settings, looked up once for the questions that follow.
    /// The fold asks several per read (retention, the reader's switch,
    /// whether anyone is off); asked of the table, each hashed the app id
    /// again: a fifth of the fold's instructions once the app had a config
    /// and a user had switched.
    pub fn app(&self, app: &str) -> AppSettings<'_> {
        match self.apps.get(app) {
            Some(e) => AppSettings { config: e.config.as_ref(), off: Some(&e.off) },
            None => AppSettings { config: None, off: None },
        }
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
/// default lives here. Its answers are inline: each is a test of a field
/// or two, asked for every read, where a call cost more than the test.
#[derive(Debug, Clone, Copy)]
pub struct AppSettings<'a> {
    config: Option<&'a AppConfig>,
    /// `None` when no user of the app ever switched.
    off: Option<&'a OffUsers>,
}

impl AppSettings<'_> {
    /// Whether C2C receipts are on (default true).
    #[inline]
    pub fn c2c_receipts(&self) -> bool {
        self.config.is_none_or(|c| c.c2c_receipts)
    }

    /// Whether receipts are on for a group type (default Work, Public, Meeting).
    #[inline]
    pub fn group_type_enabled(&self, group_type: GroupType) -> bool {
        match self.config {
            Some(c) => c.group_receipt_types.contains(&group_type),
            None => matches!(group_type, GroupType::Work | GroupType::Public | GroupType::Meeting),
        }
    }

    /// Whether a user whose receipts are off also gets none (default true).
    #[inline]
    pub fn reciprocal_privacy(&self) -> bool {
        self.config.is_none_or(|c| c.reciprocal_privacy)
    }

    /// Retention in days (default 30).
    #[inline]
    pub fn retention_days(&self) -> u32 {
        self.config.map_or(30, |c| c.retention_days)
    }

    /// Retention in milliseconds, the unit the fold's clock counts in.
    #[inline]
    pub fn retention_ms(&self) -> u64 {
        u64::from(self.retention_days()) * 86_400_000
    }

    /// Whether any user has receipts off (the fold's fast path needs none to be).
    #[inline]
    pub fn anyone_off(&self) -> bool {
        self.off.is_some_and(|off| !off.users.is_empty())
    }

    /// Whether the user's reads may be revealed.
    #[inline]
    pub fn receipts_on(&self, user: &str) -> bool {
        self.off.is_none_or(|off| !off.contains(user))
    }

    /// How often the set of users with receipts off has changed, or `None`
    /// once that count has saturated. Two equal values mean the same set, so
    /// counts that depend on who is off may be cached under it.
    #[inline]
    pub fn switches(&self) -> Option<u32> {
        let switches = self.off.map_or(0, |off| off.switches);
        (switches != u32::MAX).then_some(switches)
    }

    /// Whether the user may receive receipts for their own messages.
    #[inline]
    pub fn may_receive(&self, user: &str) -> bool {
        !self.reciprocal_privacy() || self.receipts_on(user)
    }

    /// The switches since [`Self::switches`] was `counted`, oldest first
    /// (who, and whether that turned their receipts off), if all are kept.
    pub(crate) fn switched_after(&self, counted: u32) -> Option<impl ExactSizeIterator<Item = (&str, bool)>> {
        static NONE: std::collections::VecDeque<(String, bool)> = std::collections::VecDeque::new();
        let (now, recent) = self.off.map_or((0, &NONE), |off| (off.switches, &off.recent));
        let since = now.checked_sub(counted).filter(|&n| n as usize <= recent.len() && now != u32::MAX)? as usize;
        Some(recent.range(recent.len() - since..).map(|(user, off)| (user.as_str(), *off)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use receiptd_wire::UserSettings;
    use std::collections::{BTreeMap, BTreeSet};

    #[test]
    fn the_latest_switches_are_listed_and_older_ones_known_missing() {
        let mut table = SettingsTable::default();
        let switch = |table: &mut SettingsTable, user: &str, on: bool| {
            let user = user.to_string();
            table.apply(Setting::UserSettings(UserSettings { app_id: "a".into(), user, read_receipts: on, at: 0 }));
        };
        let listed = |table: &SettingsTable, counted| {
            table.app("a").switched_after(counted).map(|s| s.map(|(u, off)| (u.to_string(), off)).collect::<Vec<_>>())
        };
        assert_eq!(listed(&table, 0), Some(vec![]), "no user ever switched");
        assert_eq!(listed(&table, 1), None);
        switch(&mut table, "u", false);
        switch(&mut table, "u", false);
        switch(&mut table, "v", true);
        assert_eq!(table.app("a").switches(), Some(1), "only changes count");
        assert_eq!(listed(&table, 0), Some(vec![("u".to_string(), true)]));
        assert_eq!(listed(&table, 1), Some(vec![]));
        for k in 0..SWITCHES_KEPT {
            switch(&mut table, "w", k % 2 == 1);
        }
        let now = table.app("a").switches().unwrap();
        assert_eq!(now, 1 + SWITCHES_KEPT as u32);
        assert_eq!(listed(&table, 1).map(|l| l.len()), Some(SWITCHES_KEPT));
        assert_eq!(listed(&table, 0), None, "u's switch is no longer listed");
        assert_eq!(listed(&table, now - 1), Some(vec![("w".to_string(), false)]));
    }

    proptest! {
        /// Configs and switches of several apps (ids that are prefixes of
        /// one another, one too long to sit inline) and users, in any
        /// order: every app's answers are those of a map of configs and
        /// a set of users off, and `switches` counts the set's changes.
        #[test]
        fn answers_as_a_map_of_apps_would(
            steps in prop::collection::vec((0usize..4, 0usize..5, any::<bool>(), any::<bool>(), 1u32..90), 0..200),
        ) {
            let long = format!("app-{}", "x".repeat(crate::INLINE_BYTES));
            let apps = ["a", "ab", "b", long.as_str()];
            let users = ["u", "u1", "v", "w", "a"];
            let mut table = SettingsTable::default();
            let mut retention: BTreeMap<&str, u32> = BTreeMap::new();
            let mut off: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
            let mut switches: BTreeMap<&str, u32> = BTreeMap::new();
            for (app, user, is_config, on, days) in steps {
                let app = apps[app];
                if is_config {
                    table.apply(Setting::AppConfig(AppConfig { retention_days: days, ..AppConfig::defaults(app) }));
                    retention.insert(app, days);
                } else {
                    let user = users[user];
                    let change = UserSettings { app_id: app.into(), user: user.into(), read_receipts: on, at: 0 };
                    table.apply(Setting::UserSettings(change));
                    let set = off.entry(app).or_default();
                    if if on { set.remove(user) } else { set.insert(user) } {
                        *switches.entry(app).or_default() += 1;
                    }
                }
                for app in apps {
                    let settings = table.app(app);
                    prop_assert_eq!(settings.retention_days(), retention.get(app).copied().unwrap_or(30), "{}", app);
                    let set = off.get(app).cloned().unwrap_or_default();
                    prop_assert_eq!(settings.anyone_off(), !set.is_empty(), "{}", app);
                    prop_assert_eq!(settings.switches(), Some(switches.get(app).copied().unwrap_or(0)), "{}", app);
                    for user in users {
                        prop_assert_eq!(settings.receipts_on(user), !set.contains(user), "{} {}", app, user);
                    }
                }
            }
        }
    }
}
