//! How busy each stream has been on this node: events published since start-up, and per second
//! over the last minute — what the dashboard's rates and sparklines show, right from the first
//! look (a page that opens or reloads gets the minute that passed, not a flat line).
//!
//! Kept per stream that had an event since start-up, in 136 bytes: a count and a ring of 60
//! per-second counters, bumped by the tailer as each event passes.

use super::event::StreamName;

/// Seconds of history kept.
pub const SECONDS: usize = 60;

#[derive(Debug, Clone)]
pub struct Activity {
    /// Events since start-up.
    pub published: u64,
    /// The newest second counted (Unix seconds); `counts[s % 60]` is second `s`'s count for
    /// the 60 seconds up to it.
    last: u64,
    counts: [u16; SECONDS],
}

impl Activity {
    pub fn new() -> Activity {
        Activity {
            published: 0,
            last: 0,
            counts: [0; SECONDS],
        }
    }

    /// One more event, at Unix second `now`. True if it is the stream's first in that second.
    pub fn bump(&mut self, now: u64) -> bool {
        self.published += 1;
        let new_second = now > self.last;
        if new_second {
            // The slots of the seconds since the last event belong to a minute ago: empty them.
            let gap = (now - self.last).min(SECONDS as u64);
            for k in 1..=gap {
                self.counts[((self.last + k) % SECONDS as u64) as usize] = 0;
            }
            self.last = now;
        }
        if now + (SECONDS as u64) > self.last {
            let slot = &mut self.counts[(now % SECONDS as u64) as usize];
            *slot = slot.saturating_add(1);
        }
        new_second
    }

    /// Events in the last minute up to `now`.
    pub fn last_minute(&self, now: u64) -> u32 {
        self.per_second(now).iter().sum::<u32>()
            + if self.last == now {
                u32::from(self.counts[(now % SECONDS as u64) as usize])
            } else {
                0
            }
    }

    /// Events in each of the last 59 whole seconds before `now`, oldest first (the current
    /// second is not over, so not shown).
    pub fn per_second(&self, now: u64) -> Vec<u32> {
        (1..SECONDS as u64)
            .rev()
            .map(|back| {
                let second = now.saturating_sub(back);
                let held = second <= self.last && self.last - second < SECONDS as u64;
                if held {
                    u32::from(self.counts[(second % SECONDS as u64) as usize])
                } else {
                    0
                }
            })
            .collect()
    }
}

/// The streams that had events lately: one entry per stream and second it had one, oldest
/// first, kept for a minute. So "which streams are busy" costs by the busy ones, however many
/// streams exist.
#[derive(Default)]
pub struct Recent(std::sync::Mutex<std::collections::VecDeque<(u64, StreamName)>>);

impl Recent {
    pub fn add(&self, second: u64, stream: &StreamName) {
        let mut recent = self.0.lock().unwrap_or_else(|e| e.into_inner());
        recent.push_back((second, stream.clone()));
        Self::forget_before(&mut recent, second.saturating_sub(SECONDS as u64));
    }

    /// The streams with events in the minute up to `now`, each once.
    pub fn streams(&self, now: u64) -> std::collections::HashSet<StreamName> {
        let mut recent = self.0.lock().unwrap_or_else(|e| e.into_inner());
        Self::forget_before(&mut recent, now.saturating_sub(SECONDS as u64));
        recent.iter().map(|(_, stream)| stream.clone()).collect()
    }

    fn forget_before(recent: &mut std::collections::VecDeque<(u64, StreamName)>, second: u64) {
        while recent.front().is_some_and(|(s, _)| *s < second) {
            recent.pop_front();
        }
    }
}

impl Default for Activity {
    fn default() -> Self {
        Activity::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_land_in_their_second_and_age_out_after_a_minute() {
        let mut a = Activity::new();
        for _ in 0..3 {
            a.bump(1000);
        }
        a.bump(1001);
        a.bump(1005);
        let recent = a.per_second(1006);
        assert_eq!(recent.len(), SECONDS - 1);
        // Oldest first: ..., 1000, 1001, 1002, 1003, 1004, 1005.
        assert_eq!(&recent[recent.len() - 6..], &[3, 1, 0, 0, 0, 1]);
        assert_eq!(a.published, 5);
        // A minute later, 1000 and 1001 are gone; 1005 has just aged out too.
        assert!(a.per_second(1066).iter().all(|&n| n == 0));
        // A new event after a long silence does not bring old counts back.
        a.bump(1100);
        assert_eq!(a.per_second(1101).iter().sum::<u32>(), 1);
        assert_eq!(a.per_second(1101)[SECONDS - 2], 1);
    }

    #[test]
    fn the_recent_streams_are_those_with_events_in_the_last_minute() {
        let (a, b) = (StreamName::new("a").unwrap(), StreamName::new("b").unwrap());
        let recent = Recent::default();
        let mut activity = Activity::new();
        // The tailer adds a stream once per second it has events in.
        for now in [1000, 1000, 1000, 1001] {
            if activity.bump(now) {
                recent.add(now, &a);
            }
        }
        recent.add(1030, &b);
        assert_eq!(activity.last_minute(1001), 4);
        assert_eq!(recent.streams(1031).len(), 2);
        assert_eq!(recent.streams(1070), [b.clone()].into_iter().collect());
        assert!(recent.streams(1100).is_empty());
        assert_eq!(
            recent.0.lock().unwrap().len(),
            0,
            "forgotten, not only hidden"
        );
    }
}
