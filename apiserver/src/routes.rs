//! Routing of watch-cache events to the watches that select them.
//!
//! Each watch has a mailbox. When the cache applies an event, it puts the event into the
//! mailboxes of the watches under its key prefix, under the cache's lock, so a watch sees its
//! events in revision order. A watch whose field selector pins a value (`spec.host=h1`) is
//! filed under that value, and an event reaches it by one lookup of the event's own value (and
//! its previous one, for selector transitions): 1,000 agents each watching their own host cost
//! one lookup per event, not 1,000 selector checks.
//!
//! A mailbox holds a bounded number of events. A watch that falls further behind is marked
//! lagging and catches up from the event ring instead (or gets 410 Expired once the ring has
//! moved past it), as every watch did before routing.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use crate::cache::Event;

/// Events a mailbox holds before its watch must catch up from the ring.
const MAILBOX_EVENTS: usize = 1024;

/// The field term a watch is filed under: it only wants objects whose `path` renders as
/// `value`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pin {
    pub path: String,
    pub value: String,
}

pub struct Mailbox {
    prefix: String,
    pin: Option<Pin>,
    events: Mutex<VecDeque<Arc<Event>>>,
    /// Events were dropped (or the watch is new): the next take reads the ring.
    lagging: AtomicBool,
    notify: Notify,
}

impl Mailbox {
    fn queue(&self) -> MutexGuard<'_, VecDeque<Arc<Event>>> {
        self.events.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&self, event: &Arc<Event>) {
        if self.lagging.load(Ordering::Acquire) {
            return;
        }
        let mut queue = self.queue();
        if queue.len() >= MAILBOX_EVENTS {
            queue.clear();
            self.lagging.store(true, Ordering::Release);
        } else {
            queue.push_back(event.clone());
        }
        drop(queue);
        self.notify.notify_one();
    }

    /// What arrived since the last take; `None` when the watch must read the ring instead.
    /// Called under the cache's lock, so nothing is routed meanwhile.
    pub(crate) fn take(&self) -> Option<Vec<Arc<Event>>> {
        let mut queue = self.queue();
        if self.lagging.swap(false, Ordering::AcqRel) {
            queue.clear();
            return None;
        }
        Some(queue.drain(..).collect())
    }

    /// Resolves once something arrived (or arrived since the last call).
    pub async fn arrived(&self) {
        self.notify.notified().await
    }
}

/// Mailboxes of the watches filed together.
type Slot = Vec<Arc<Mailbox>>;

/// Every open watch's mailbox, by prefix and pin.
#[derive(Default)]
pub struct Routes {
    /// Prefix → mailboxes of watches without a pin.
    all: BTreeMap<String, Slot>,
    /// (prefix, pinned path) → pinned value → mailboxes.
    pinned: HashMap<(String, String), HashMap<String, Slot>>,
}

impl Routes {
    /// A mailbox for a new watch; it starts lagging, so the watch first reads the ring from
    /// where it starts.
    pub fn open(&mut self, prefix: &str, pin: Option<Pin>) -> Arc<Mailbox> {
        let mailbox = Arc::new(Mailbox {
            prefix: prefix.to_string(),
            pin: pin.clone(),
            events: Mutex::new(VecDeque::new()),
            lagging: AtomicBool::new(true),
            notify: Notify::new(),
        });
        let slot = match pin {
            None => self.all.entry(prefix.to_string()).or_default(),
            Some(Pin { path, value }) => self
                .pinned
                .entry((prefix.to_string(), path))
                .or_default()
                .entry(value)
                .or_default(),
        };
        slot.push(mailbox.clone());
        mailbox
    }

    pub fn close(&mut self, mailbox: &Arc<Mailbox>) {
        let remove = |slot: &mut Slot| slot.retain(|m| !Arc::ptr_eq(m, mailbox));
        match &mailbox.pin {
            None => {
                if let Some(slot) = self.all.get_mut(&mailbox.prefix) {
                    remove(slot);
                    if slot.is_empty() {
                        self.all.remove(&mailbox.prefix);
                    }
                }
            }
            Some(pin) => {
                let index = (mailbox.prefix.clone(), pin.path.clone());
                if let Some(values) = self.pinned.get_mut(&index) {
                    if let Some(slot) = values.get_mut(&pin.value) {
                        remove(slot);
                        if slot.is_empty() {
                            values.remove(&pin.value);
                        }
                    }
                    if values.is_empty() {
                        self.pinned.remove(&index);
                    }
                }
            }
        }
    }

    /// Sends every watch to the ring, where it finds the history gone (a resync).
    pub fn lag_all(&self) {
        let pinned = self.pinned.values().flat_map(HashMap::values);
        for mailbox in self.all.values().chain(pinned).flatten() {
            mailbox.lagging.store(true, Ordering::Release);
            mailbox.notify.notify_one();
        }
    }

    #[cfg(test)]
    pub(crate) fn open_count(&self) -> usize {
        let pinned = self.pinned.values().flat_map(HashMap::values);
        self.all.values().chain(pinned).map(Vec::len).sum()
    }

    /// Puts `event` into the mailbox of every watch that may want it.
    pub fn route(&self, event: &Arc<Event>) {
        for (prefix, slot) in &self.all {
            if event.key.starts_with(prefix.as_str()) {
                slot.iter().for_each(|m| m.push(event));
            }
        }
        for ((prefix, path), values) in &self.pinned {
            if !event.key.starts_with(prefix.as_str()) {
                continue;
            }
            let now = event.object.field(path);
            if let Some(slot) = values.get(&now) {
                slot.iter().for_each(|m| m.push(event));
            }
            // A watch whose value the object just left sees it go.
            if let Some(before) = event.prev.as_ref().map(|p| p.field(path)) {
                if before != now {
                    if let Some(slot) = values.get(&before) {
                        slot.iter().for_each(|m| m.push(event));
                    }
                }
            }
        }
    }
}
