//! The checkpoint thread's claim on the core. Its settles (sled's bulk writes, see
//! `sled/pending.rs`) are the largest CPU cost herald has off the acknowledgement path. At the
//! writer's priority they take turns with the writer and the HTTP workers on a busy core, and
//! every publish waits a little longer for them, though nothing waits for the settle itself. So
//! on Linux the thread runs at idle priority (`SCHED_IDLE`): it gets the core when nothing else
//! wants it (on a machine with a free core, at once), and the work is done in the gaps, while
//! the writer waits for its `fdatasync`.
//!
//! Idle priority must never mean starved: a settle holds sled's lock on the whole store (every
//! read waits for its batch) and, for moments, the pending events' lock, and a thread at idle
//! priority waits for the core without bound while anything else wants it — other programs on
//! the machine too. So the thread is raised to normal priority by the writer when the pending
//! events pile up (`Backlog::Behind`) and before the writer does anything that waits for a
//! settle (a settle of its own, a trim, a change, closing), and by a watchdog when a job has run
//! 10 ms at idle priority; it lowers itself again once caught up. Measured with two CPU hogs
//! beside herald on its core (`benches/proof/starve.sh`): without the watchdog, reads of sled
//! waited up to 1 s behind a starved settle; with it, no longer than at normal priority.
//!
//! Leaving idle priority needs `CAP_SYS_NICE` or an `RLIMIT_NICE` of at least 20 (systemd's
//! `LimitNICE=+0`, as `docs/deploy/herald.service` sets; Docker's `--ulimit nice=20`). Without
//! either, the thread keeps normal priority (a thread that could not be raised could starve),
//! as it does on other systems.

use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use os::Handle;

/// A job at idle priority still running after this long is raised: it may hold what publishers
/// and readers wait for (sled's lock on the whole store during a batch; for moments, the pending
/// events),
/// and idle priority puts no bound on its wait for the core, which other programs on a busy
/// machine may keep. Measured (`load publish`, 8 s, 2 rounds): 10 ms keeps nearly all that idle
/// priority gains (16 connections 30.7k / 30.6k POSTs/s against 31.1k / 31.1k without a
/// watchdog, and ~25.5k at normal priority), 3 ms loses half of it (28.6k / 27.8k).
const STARVED_AFTER: Duration = Duration::from_millis(10);

/// Where one thread's priority stands: idle or normal, changed only under the lock, so a raise
/// and a lowering never cross.
pub(super) struct Priority {
    state: Mutex<State>,
    /// Told when a job begins, and when the watchdog is to stop.
    changed: Condvar,
    /// [`STARVED_AFTER`], but for tests.
    starved_after: Duration,
}

struct State {
    /// The thread, while a watchdog watches it (see [`Priority::watch`]): only then may it go
    /// idle, and the watchdog stops once it is `None` again.
    thread: Option<Handle>,
    /// Whether the thread runs at normal priority now.
    normal: bool,
    /// When the thread's job began, while it runs.
    job_began: Option<Instant>,
    /// A raise failed and was logged (it is not logged again).
    raise_failed: bool,
}

impl Priority {
    /// A thread's priority: normal until the thread, watched, lowers itself.
    pub(super) fn new() -> Arc<Priority> {
        Priority::starved_after(STARVED_AFTER)
    }

    fn starved_after(starved_after: Duration) -> Arc<Priority> {
        Arc::new(Priority {
            state: Mutex::new(State {
                thread: None,
                normal: true,
                job_began: None,
                raise_failed: false,
            }),
            changed: Condvar::new(),
            starved_after,
        })
    }

    /// Called on the thread itself: goes to idle priority, if `caught_up` says so then (and a
    /// watchdog watches it).
    pub(super) fn lower(&self, caught_up: impl FnOnce() -> bool) {
        let mut state = self.state();
        if state.thread.is_some() && state.normal && caught_up() {
            match set_own_policy(Policy::Idle) {
                Ok(()) => state.normal = false,
                Err(e) => tracing::debug!(error = %e, "could not lower the checkpoint thread"),
            }
        }
    }

    /// Called on the thread itself as a job begins; the job ends (and the thread lowers itself,
    /// if `caught_up` says so then) when the returned guard is dropped.
    pub(super) fn job<F: Fn() -> bool>(&self, caught_up: F) -> Job<'_, F> {
        self.state().job_began = Some(Instant::now());
        self.changed.notify_all();
        Job {
            priority: self,
            caught_up,
        }
    }

    /// Puts the thread back at normal priority (it lowers itself once caught up).
    pub(super) fn raise(&self) {
        let mut state = self.state();
        if let (false, Some(thread)) = (state.normal, state.thread) {
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

    /// Where the thread may go idle, starts the watchdog that raises a job starved at idle
    /// priority (see [`STARVED_AFTER`]) and lets the thread lower itself from then on. `None`:
    /// the thread keeps normal priority. The watchdog raises the thread and stops when the
    /// returned value is dropped, which must be before `thread` is joined or detached.
    pub(super) fn watch<T>(self: &Arc<Self>, thread: &JoinHandle<T>) -> Option<Watchdog> {
        if !idle_can_be_left() {
            return None;
        }
        // Under the lock until the watchdog is running, so the thread cannot lower itself
        // before it is watched.
        let mut state = self.state();
        state.thread = Some(os::handle(thread));
        let priority = self.clone();
        let spawned = std::thread::Builder::new()
            .name("herald-watchdog".into())
            .spawn(move || priority.run_watchdog());
        match spawned {
            Ok(watchdog) => Some(Watchdog {
                priority: self.clone(),
                thread: Some(watchdog),
            }),
            Err(e) => {
                state.thread = None;
                tracing::warn!(error = %e, "could not start the checkpoint thread's watchdog; it keeps normal priority");
                None
            }
        }
    }

    fn run_watchdog(&self) {
        let mut state = self.state();
        loop {
            if state.thread.is_none() {
                return;
            }
            let began = match (state.normal, state.job_began) {
                (false, Some(began)) => began,
                // Nothing at idle priority that could hold anything up: wait for a job.
                _ => {
                    state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
                    continue;
                }
            };
            let ran = began.elapsed();
            if ran < self.starved_after {
                state = self
                    .changed
                    .wait_timeout(state, self.starved_after - ran)
                    .map(|(state, _)| state)
                    .unwrap_or_else(|e| e.into_inner().0);
                continue;
            }
            drop(state);
            self.raise();
            state = self.state();
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the thread runs at normal priority now (for tests).
    #[cfg(test)]
    pub(super) fn is_normal(&self) -> bool {
        self.state().normal
    }
}

/// A job of the thread's, while it runs (see [`Priority::job`]).
pub(super) struct Job<'a, F: Fn() -> bool> {
    priority: &'a Priority,
    caught_up: F,
}

impl<F: Fn() -> bool> Drop for Job<'_, F> {
    fn drop(&mut self) {
        self.priority.state().job_began = None;
        self.priority.lower(&self.caught_up);
    }
}

/// The watchdog thread; stopped and joined when dropped.
pub(super) struct Watchdog {
    priority: Arc<Priority>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        // Unwatched, the thread must not stay idle: it is raised, and cannot lower itself again.
        self.priority.raise();
        // The thread's handle is not used once the watchdog is gone.
        self.priority.state().thread = None;
        self.priority.changed.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
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

    /// How another thread names a thread to change its priority.
    pub(super) type Handle = libc::pthread_t;

    pub(super) fn handle<T>(thread: &JoinHandle<T>) -> Handle {
        thread.as_pthread_t()
    }

    /// Safety: `thread` must name a thread that is neither joined nor detached yet (its
    /// JoinHandle is still held), or the calling thread.
    unsafe fn set(thread: Handle, policy: Policy) -> std::io::Result<()> {
        let policy = match policy {
            Policy::Idle => libc::SCHED_IDLE,
            Policy::Normal => libc::SCHED_OTHER,
        };
        // Both policies take static priority 0.
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: `thread` is valid (the caller's promise); `param` outlives the call, which
        // only reads it.
        match unsafe { libc::pthread_setschedparam(thread, policy, &param) } {
            0 => Ok(()),
            errno => Err(std::io::Error::from_raw_os_error(errno)),
        }
    }

    pub(super) fn set_own_policy(policy: Policy) -> std::io::Result<()> {
        // SAFETY: pthread_self has no preconditions, and names the calling thread.
        unsafe { set(libc::pthread_self(), policy) }
    }

    /// `thread` must be one the caller knows is neither joined nor detached.
    pub(super) fn set_policy(thread: Handle, policy: Policy) -> std::io::Result<()> {
        // SAFETY: a `Priority` holds a thread's handle only between `watch` and the watchdog's
        // drop, which comes before the thread's JoinHandle is joined or dropped (see
        // `Priority::watch`).
        unsafe { set(thread, policy) }
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

    pub(super) type Handle = ();

    pub(super) fn handle<T>(_: &JoinHandle<T>) -> Handle {}

    fn unsupported() -> std::io::Result<()> {
        Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "idle priority is Linux's",
        ))
    }

    pub(super) fn set_own_policy(_: Policy) -> std::io::Result<()> {
        unsupported()
    }

    pub(super) fn set_policy(_: Handle, _: Policy) -> std::io::Result<()> {
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

    /// A thread that runs one job per [`Worker::job`].
    struct Worker {
        ask: mpsc::Sender<bool>,
        go: mpsc::Sender<()>,
        told: mpsc::Receiver<bool>,
        thread: JoinHandle<()>,
    }

    impl Worker {
        fn start(priority: &Arc<Priority>) -> Worker {
            let (ask, asked) = mpsc::channel::<bool>();
            let (go, gone) = mpsc::channel::<()>();
            let (tell, told) = mpsc::channel::<bool>();
            let priority = priority.clone();
            let thread = std::thread::spawn(move || {
                for caught_up in asked {
                    let job = priority.job(|| caught_up);
                    if gone.recv().is_err() {
                        return;
                    }
                    let idle = os::own_policy_is_idle();
                    drop(job);
                    tell.send(idle).unwrap();
                }
            });
            Worker {
                ask,
                go,
                told,
                thread,
            }
        }

        /// Runs a job: `during` while it runs, then it ends (caught up if `caught_up`). Whether
        /// the job ran at idle priority.
        fn job(&self, caught_up: bool, during: impl FnOnce()) -> bool {
            self.ask.send(caught_up).unwrap();
            during();
            self.go.send(()).unwrap();
            self.told.recv().unwrap()
        }

        fn stop(self) {
            drop((self.ask, self.go));
            self.thread.join().unwrap();
        }
    }

    #[test]
    fn a_thread_lowered_to_idle_is_raised_by_another_and_lowers_only_once_caught_up() {
        // No job here is starved.
        let priority = Priority::starved_after(Duration::from_secs(3600));
        let worker = Worker::start(&priority);
        let watchdog = priority.watch(&worker.thread);
        if !idle_can_be_left() {
            // Here leaving idle priority is not allowed: then nothing may ever go idle.
            assert!(watchdog.is_none());
            assert!(!worker.job(true, || {}));
            assert!(priority.is_normal());
            worker.stop();
            return;
        }
        // Watched, the thread goes idle once a job ends caught up.
        worker.job(true, || {});
        assert!(!priority.is_normal());
        assert!(worker.job(true, || {}), "a job at idle priority");
        assert!(
            !worker.job(false, || priority.raise()),
            "raised by another thread"
        );
        // That job ended not caught up: the next one stays normal too, and ends caught up.
        assert!(!worker.job(true, || {}), "not caught up: stayed normal");
        assert!(worker.job(true, || {}), "caught up: idle again");
        drop(watchdog);
        worker.stop();
    }

    #[test]
    fn a_job_starved_at_idle_priority_is_raised_by_the_watchdog() {
        let starved_after = Duration::from_millis(20);
        let priority = Priority::starved_after(starved_after);
        let worker = Worker::start(&priority);
        let Some(watchdog) = priority.watch(&worker.thread) else {
            assert!(
                !idle_can_be_left(),
                "no watchdog only where idle is not allowed"
            );
            return;
        };
        // Watched, the thread goes idle once a job ends caught up.
        worker.job(true, || {});
        assert!(!priority.is_normal());
        // A job that lasts past `starved_after` (as one waiting for the core would).
        let ran_idle = worker.job(true, || {
            let began = Instant::now();
            while !priority.is_normal() {
                assert!(began.elapsed() < Duration::from_secs(10), "never raised");
                std::thread::sleep(Duration::from_millis(1));
            }
            assert!(
                began.elapsed() >= starved_after,
                "raised before it was starved"
            );
        });
        assert!(!ran_idle, "the rest of the job runs at normal priority");
        // Unwatched, the thread is raised and stays normal.
        worker.job(true, || {});
        drop(watchdog);
        assert!(priority.is_normal());
        assert!(
            !worker.job(true, || {}),
            "no longer watched: never idle again"
        );
        worker.stop();
    }
}
