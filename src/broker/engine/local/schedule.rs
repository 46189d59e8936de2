//! Which streams the writer's next trim step looks at, so that a step costs by what changed
//! since the last one — not by how many streams exist. One stream per user or per page is
//! normal: a hundred thousand streams, most of them quiet, must cost nothing per second.
//!
//! A stream can come over its length limit only when it is appended to (or its limit is
//! lowered): those are *touched*, and looked at once by the next step. It can come over its age
//! limit only as time passes: each stream with an age limit and events is *due* at the moment
//! its oldest event comes of age, and looked at then.

use std::collections::{BTreeSet, HashMap, HashSet};

use crate::broker::event::StreamName;

#[derive(Default)]
pub(super) struct TrimSchedule {
    /// Appended to, re-set or not yet looked at since the last step.
    touched: HashSet<StreamName>,
    /// (when, stream): the stream's oldest event comes of age at `when` (Unix ms).
    due: BTreeSet<(u64, StreamName)>,
    /// Each stream's entry in `due`.
    due_at: HashMap<StreamName, u64>,
}

impl TrimSchedule {
    /// A schedule that looks at every one of `streams` once (at start-up).
    pub fn every(streams: impl IntoIterator<Item = StreamName>) -> TrimSchedule {
        TrimSchedule {
            touched: streams.into_iter().collect(),
            ..TrimSchedule::default()
        }
    }

    /// The next step looks at `stream`.
    pub fn touch(&mut self, stream: &StreamName) {
        if !self.touched.contains(stream) {
            self.touched.insert(stream.clone());
        }
    }

    /// When `stream` must be looked at for its age limit; `None`: never (no age limit, or no
    /// events).
    pub fn set_due(&mut self, stream: &StreamName, when: Option<u64>) {
        if self.due_at.get(stream).copied() == when {
            return;
        }
        if let Some(old) = self.due_at.remove(stream) {
            self.due.remove(&(old, stream.clone()));
        }
        if let Some(when) = when {
            self.due.insert((when, stream.clone()));
            self.due_at.insert(stream.clone(), when);
        }
    }

    /// The stream is gone (deleted): nothing to look at.
    pub fn forget(&mut self, stream: &StreamName) {
        self.touched.remove(stream);
        self.set_due(stream, None);
    }

    /// The streams to look at now: every touched one, and every one due by `now`. Each is
    /// taken off the schedule; what the step finds puts it back.
    pub fn take(&mut self, now: u64) -> Vec<StreamName> {
        let mut streams: Vec<StreamName> = self.touched.drain().collect();
        while let Some((when, _)) = self.due.first() {
            if *when > now {
                break;
            }
            if let Some((_, stream)) = self.due.pop_first() {
                self.due_at.remove(&stream);
                streams.push(stream);
            }
        }
        streams.sort_unstable();
        streams.dedup();
        streams
    }

    /// How many streams are on the schedule (for tests and metrics).
    #[cfg(test)]
    pub fn len(&self) -> (usize, usize) {
        (self.touched.len(), self.due.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(name: &str) -> StreamName {
        StreamName::new(name).unwrap()
    }

    #[test]
    fn a_step_takes_the_touched_and_the_due_once_each() {
        let mut schedule = TrimSchedule::every([s("a"), s("b")]);
        assert_eq!(schedule.take(0), [s("a"), s("b")]);
        assert!(schedule.take(0).is_empty(), "nothing changed since");

        schedule.touch(&s("c"));
        schedule.touch(&s("c"));
        schedule.set_due(&s("d"), Some(100));
        schedule.set_due(&s("e"), Some(50));
        schedule.set_due(&s("e"), Some(200)); // re-set: only the new time counts
        assert_eq!(schedule.take(99), [s("c")]);
        assert_eq!(schedule.take(150), [s("d")]);
        schedule.touch(&s("e"));
        assert_eq!(schedule.take(250), [s("e")], "touched and due: once");
        assert_eq!(schedule.len(), (0, 0));

        schedule.touch(&s("f"));
        schedule.set_due(&s("f"), Some(10));
        schedule.forget(&s("f"));
        assert!(schedule.take(u64::MAX).is_empty());
    }
}
