//! The checkpoint thread's claim on the core. Its settles (sled's bulk writes, see
//! `sled/pending.rs`) are the largest CPU cost herald has off the acknowledgement path. At the
//! writer's priority they take turns with the writer and the HTTP workers on a busy core, and
//! every publish waits a little longer for them, though nothing waits for the settle itself. So
//! on Linux the thread runs at idle priority (`SCHED_IDLE`): it gets the core when nothing else
//! wants it (on a machine with a free core, at once), and the work is done in the gaps, while
//! the writer waits for its `fdatasync`.
//!
//! Idle priority must never mean starved. When the pending events pile up (`Backlog::Behind`),
//! and before the writer does anything that waits for a settle (a settle of its own, a trim, a
//! delete, closing), the writer raises the thread to normal priority; the thread lowers itself
//! again once it has caught up.
//!
//! Leaving idle priority needs `CAP_SYS_NICE` or an `RLIMIT_NICE` of at least 20 (systemd's
//! `LimitNICE=+0`, as `docs/deploy/herald.service` sets; Docker's `--ulimit nice=20`). Without
//! either, the thread keeps normal priority (a thread that could not be raised could starve),
//! as it does on other systems.

use std::sync::{Mutex, OnceLock};
use std::thread::JoinHandle;

/// Where one thread's priority stands: idle or normal, changed only under the lock, so a raise
/// and a lowering never cross.
pub(super) struct Priority {
    /// Whether the thread may go idle at all (see the module docs).
    idle_allowed: bool,
    state: Mutex<State>,
}

struct State {
    /// Whether the thread runs at normal priority now.
    normal: bool,
    /// A raise failed and was logged (it is not logged again).
    raise_failed: bool,
}

impl Priority {
    /// A thread's priority, normal until [`Priority::lower`] is called on it.
    pub(super) fn new() -> Priority {
        Priority {
            idle_allowed: idle_can_be_left(),
            state: Mutex::new(State {
                normal: true,
                raise_failed: false,
            }),
        }
    }

    /// Whether the thread goes to idle priority when it lowers itself.
    pub(super) fn idle_allowed(&self) -> bool {
        self.idle_allowed
    }

    /// Called on the thread itself: goes to idle priority, if `caught_up` says so then.
    pub(super) fn lower(&self, caught_up: impl FnOnce() -> bool) {
        if !self.idle_allowed {
            return;
        }
        let mut state = self.state();
        if state.normal && caught_up() {
            match set_own_policy(Policy::Idle) {
                Ok(()) => state.normal = false,
                Err(e) => tracing::debug!(error = %e, "could not lower the checkpoint thread"),
            }
        }
    }

    /// Puts `thread` (whose priority this is) back at normal priority.
    pub(super) fn raise<T>(&self, thread: &JoinHandle<T>) {
        if !self.idle_allowed {
            return;
        }
        let mut state = self.state();
        if !state.normal {
            match set_policy(thread, Policy::Normal) {
                Ok(()) => state.normal = true,
                Err(e) if !state.raise_failed => {
                    state.raise_failed = true;
                    tracing::error!(error = %e, "could not raise the checkpoint thread from idle priority; it stores pending events only when the core is free");
                }
                Err(_) => {}
            }
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the thread runs at normal priority now (for tests).
    #[cfg(test)]
    pub(super) fn is_normal(&self) -> bool {
        self.state().normal
    }
}

#[derive(Clone, Copy)]
enum Policy {
    Idle,
    Normal,
}

/// Whether a thread here can go to idle priority and come back: tried once, on a thread of its
/// own (a thread that went idle and could not come back would stay so).
fn idle_can_be_left() -> bool {
    static ALLOWED: OnceLock<bool> = OnceLock::new();
    *ALLOWED.get_or_init(|| {
        std::thread::Builder::new()
            .name("herald-probe".into())
            .spawn(|| {
                set_own_policy(Policy::Idle).is_ok() && set_own_policy(Policy::Normal).is_ok()
            })
            .map(|probe| probe.join().unwrap_or(false))
            .unwrap_or(false)
    })
}

#[cfg(target_os = "linux")]
mod os {
    use std::os::unix::thread::JoinHandleExt;
    use std::thread::JoinHandle;

    use super::Policy;

    fn set(thread: libc::pthread_t, policy: Policy) -> std::io::Result<()> {
        let policy = match policy {
            Policy::Idle => libc::SCHED_IDLE,
            Policy::Normal => libc::SCHED_OTHER,
        };
        // Both policies take static priority 0.
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: `thread` names a thread that has not been joined (the calling one, or one
        // whose JoinHandle the caller holds), so the handle is valid; `param` outlives the call,
        // which only reads it.
        match unsafe { libc::pthread_setschedparam(thread, policy, &param) } {
            0 => Ok(()),
            errno => Err(std::io::Error::from_raw_os_error(errno)),
        }
    }

    pub(super) fn set_own_policy(policy: Policy) -> std::io::Result<()> {
        // SAFETY: pthread_self has no preconditions.
        set(unsafe { libc::pthread_self() }, policy)
    }

    pub(super) fn set_policy<T>(thread: &JoinHandle<T>, policy: Policy) -> std::io::Result<()> {
        set(thread.as_pthread_t(), policy)
    }

    /// The calling thread's policy is `SCHED_IDLE` (for tests).
    #[cfg(test)]
    pub(super) fn own_policy_is_idle() -> bool {
        // SAFETY: sched_getscheduler(0) asks about the calling thread and has no preconditions.
        unsafe { libc::sched_getscheduler(0) == libc::SCHED_IDLE }
    }
}

#[cfg(not(target_os = "linux"))]
mod os {
    use std::thread::JoinHandle;

    use super::Policy;

    fn unsupported() -> std::io::Result<()> {
        Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "idle priority is Linux's",
        ))
    }

    pub(super) fn set_own_policy(_: Policy) -> std::io::Result<()> {
        unsupported()
    }

    pub(super) fn set_policy<T>(_: &JoinHandle<T>, _: Policy) -> std::io::Result<()> {
        unsupported()
    }

    #[cfg(test)]
    pub(super) fn own_policy_is_idle() -> bool {
        false
    }
}

use os::{set_own_policy, set_policy};

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::sync::Arc;

    #[test]
    fn a_thread_lowered_to_idle_is_raised_by_another_and_lowers_only_once_caught_up() {
        let priority = Arc::new(Priority::new());
        if !priority.idle_allowed() {
            // Here leaving idle priority is not allowed: then nothing may ever go idle.
            let lowered = std::thread::spawn({
                let priority = priority.clone();
                move || {
                    priority.lower(|| true);
                    os::own_policy_is_idle()
                }
            });
            assert!(!lowered.join().unwrap());
            assert!(priority.is_normal());
            return;
        }
        let (ask, asked) = mpsc::channel::<bool>();
        let (tell, told) = mpsc::channel::<bool>();
        let thread = std::thread::spawn({
            let priority = priority.clone();
            move || {
                // Each message: lower if caught up (the message), then report the policy.
                for caught_up in asked {
                    priority.lower(|| caught_up);
                    tell.send(os::own_policy_is_idle()).unwrap();
                }
            }
        });
        ask.send(false).unwrap();
        assert!(!told.recv().unwrap(), "not caught up: stays normal");
        ask.send(true).unwrap();
        assert!(told.recv().unwrap(), "caught up: idle");
        assert!(!priority.is_normal());
        priority.raise(&thread);
        assert!(priority.is_normal());
        ask.send(false).unwrap();
        assert!(!told.recv().unwrap(), "raised by another thread");
        ask.send(true).unwrap();
        assert!(told.recv().unwrap(), "and lowered again");
        drop(ask);
        thread.join().unwrap();
    }
}
