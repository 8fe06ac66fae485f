//! The update state machine, pure: a function from (state, event) to (state, actions), with no
//! IO. The driver in [`super::driver`] journals the new state *before* it carries out the
//! actions, so that an agent killed anywhere starts again from a state whose actions are safe
//! to repeat or to undo.
//!
//! ```text
//!  Downloading ──ok──▶ Installing ──ok──────────────────────────▶ Verifying ──ok──▶ Committing ──ok──▶ Succeeded
//!      │                   │  └──needs reboot──▶ Rebooting ──(boot)──▶ ┘  │                │
//!      │fail               │fail                    │fell back / failed   │fail            │fail
//!      ▼                   ▼                        ▼                     ▼                ▼
//!    Failed   ◀──(no rollback)── RollingBack ◀──────┴─────────────────────┴────────────────┘
//!                                   │ ok ──▶ RolledBack
//!                                   └ needs reboot ──▶ RollbackRebooting ──(boot on old)──▶ RolledBack
//! ```

use serde::{Deserialize, Serialize};

/// How many times the agent may start in `Rebooting` or `Verifying` of one update (each a boot
/// of the new software, or a restart of the agent on it) before it gives up and rolls back.
pub const MAX_ATTEMPTS: u32 = 3;

/// A journaled state of the update in progress (or the last one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// The artifact is being read: scripts and payloads go to the work directory or, for
    /// `rootfs-ab`, the inactive slot. Nothing the device runs has changed.
    Downloading,
    /// `before_install` scripts, the module's install, `after_install` scripts.
    Installing,
    /// The module asked for a reboot into what it installed (for `rootfs-ab`: the boot
    /// environment points at the new slot, on trial).
    Rebooting,
    /// Checking the new software: the module's verify and the health check.
    Verifying,
    /// Making it permanent: the module's commit, then the installed records.
    Committing,
    /// Undoing the module's install.
    RollingBack,
    /// The rollback needs a reboot into the old software.
    RollbackRebooting,
    /// Installed and committed.
    Succeeded,
    /// Failed; nothing to undo (or undoing failed: see the log).
    Failed,
    /// Failed and undone: the device runs what it ran before.
    RolledBack,
}

impl State {
    /// Every state, in flow order (for tests and documentation).
    pub const ALL: [State; 10] = [
        State::Downloading,
        State::Installing,
        State::Rebooting,
        State::Verifying,
        State::Committing,
        State::RollingBack,
        State::RollbackRebooting,
        State::Succeeded,
        State::Failed,
        State::RolledBack,
    ];

    /// Whether the update is over.
    pub fn is_terminal(self) -> bool {
        matches!(self, State::Succeeded | State::Failed | State::RolledBack)
    }

    /// The name used in the journal, logs and `TENDER_AGENT_CRASH_AT`.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Downloading => "downloading",
            State::Installing => "installing",
            State::Rebooting => "rebooting",
            State::Verifying => "verifying",
            State::Committing => "committing",
            State::RollingBack => "rolling_back",
            State::RollbackRebooting => "rollback_rebooting",
            State::Succeeded => "succeeded",
            State::Failed => "failed",
            State::RolledBack => "rolled_back",
        }
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the device booted, as the module sees it when the agent starts with an update
/// journaled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Boot {
    /// The software running now is the update's (`rootfs-ab`: the new slot). Modules that do
    /// not reboot always say yes: what they installed is live.
    pub on_new: bool,
    /// The boot configuration still points at the new software on trial (`rootfs-ab`:
    /// `upgrade_available=1` and `boot_part` the new slot): a reboot would try it.
    pub armed: bool,
}

/// What happened in the current state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The state's work is done.
    Done,
    /// Done, and a reboot must follow (the module's install, or a rollback).
    NeedsReboot,
    /// The work failed.
    Failed(String),
    /// It failed before anything was changed (a `before_install` script): nothing to undo.
    Aborted(String),
    /// The agent started with this state in the journal (after a crash, a restart or a reboot).
    Started(Boot),
}

/// What the module can do (asked once per update).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    /// It can undo its install (`SupportsRollback`).
    pub rollback: bool,
}

/// What the driver does after journaling the new state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// `before_install` scripts, the module's install, `after_install` scripts.
    Install,
    /// Run the reboot command (the process then waits to be stopped, or exits).
    Reboot,
    /// The module's verify and the health check.
    Verify,
    /// The module's commit and the installed records (provides, `<name>.version`).
    Commit,
    /// The module's rollback.
    Rollback,
    /// Run the scripts of a state; their failure is logged, nothing more.
    Scripts(tender_artifact::ScriptState),
    /// Remove the work directory (and the module's leftovers).
    Cleanup,
    /// Add a line to the journal's log.
    Log(String),
}

/// A state with its restart count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Machine {
    pub state: State,
    /// Starts of the agent in `Rebooting`/`Verifying`/`RollbackRebooting` so far.
    pub attempts: u32,
}

impl Machine {
    pub fn new() -> Self {
        Machine {
            state: State::Downloading,
            attempts: 0,
        }
    }
}

impl Default for Machine {
    fn default() -> Self {
        Machine::new()
    }
}

fn go(state: State, attempts: u32, actions: Vec<Action>) -> (Machine, Vec<Action>) {
    (Machine { state, attempts }, actions)
}

fn rollback_or_fail(caps: Caps, attempts: u32, why: String) -> (Machine, Vec<Action>) {
    if caps.rollback {
        go(
            State::RollingBack,
            attempts,
            vec![Action::Log(why), Action::Rollback],
        )
    } else {
        go(
            State::Failed,
            attempts,
            vec![
                Action::Log(format!("{why}; the module cannot roll back")),
                Action::Cleanup,
            ],
        )
    }
}

fn finished(
    state: State,
    attempts: u32,
    scripts: Option<tender_artifact::ScriptState>,
) -> (Machine, Vec<Action>) {
    let mut actions: Vec<Action> = scripts.into_iter().map(Action::Scripts).collect();
    actions.push(Action::Cleanup);
    go(state, attempts, actions)
}

/// The transition function. Terminal states ignore every event.
pub fn step(m: Machine, event: Event, caps: Caps) -> (Machine, Vec<Action>) {
    use tender_artifact::ScriptState as S;
    use {Event as E, State as St};
    let n = m.attempts;
    match (m.state, event) {
        (s, _) if s.is_terminal() => (m, vec![]),

        (St::Downloading, E::Done | E::NeedsReboot) => go(St::Installing, n, vec![Action::Install]),
        (St::Downloading, E::Failed(e) | E::Aborted(e)) => {
            go(St::Failed, n, vec![Action::Log(e), Action::Cleanup])
        }
        (St::Downloading, E::Started(_)) => go(
            St::Failed,
            n,
            vec![
                Action::Log("interrupted while downloading; nothing was installed".into()),
                Action::Cleanup,
            ],
        ),

        (St::Installing, E::Done) => go(St::Verifying, n, vec![Action::Verify]),
        (St::Installing, E::NeedsReboot) => go(St::Rebooting, n, vec![Action::Reboot]),
        (St::Installing, E::Aborted(e)) => go(St::Failed, n, vec![Action::Log(e), Action::Cleanup]),
        (St::Installing, E::Failed(e)) => rollback_or_fail(caps, n, e),
        (St::Installing, E::Started(_)) => {
            rollback_or_fail(caps, n, "interrupted while installing".into())
        }

        // The reboot command ran; this process stops here and the next start goes on.
        (St::Rebooting, E::Done | E::NeedsReboot) => (m, vec![]),
        (St::Rebooting, E::Failed(e) | E::Aborted(e)) => rollback_or_fail(caps, n, e),
        (St::Rebooting, E::Started(b)) if b.on_new => {
            if n + 1 > MAX_ATTEMPTS {
                rollback_or_fail(
                    caps,
                    n + 1,
                    format!("started {} times without finishing the update", n + 1),
                )
            } else {
                go(St::Verifying, n + 1, vec![Action::Verify])
            }
        }
        (St::Rebooting, E::Started(b)) if b.armed => {
            // Not rebooted yet (the agent restarted before the reboot): reboot again.
            if n + 1 > MAX_ATTEMPTS {
                rollback_or_fail(
                    caps,
                    n + 1,
                    "the device did not reboot into the update".into(),
                )
            } else {
                go(
                    St::Rebooting,
                    n + 1,
                    vec![
                        Action::Log("started before the reboot; rebooting again".into()),
                        Action::Reboot,
                    ],
                )
            }
        }
        (St::Rebooting, E::Started(_)) => rollback_or_fail(
            caps,
            n,
            "the device came back on the old software (the boot loader fell back)".into(),
        ),

        (St::Verifying, E::Done | E::NeedsReboot) => go(St::Committing, n, vec![Action::Commit]),
        (St::Verifying, E::Failed(e) | E::Aborted(e)) => {
            rollback_or_fail(caps, n, format!("verification failed: {e}"))
        }
        (St::Verifying, E::Started(b)) if b.on_new && n < MAX_ATTEMPTS => go(
            St::Verifying,
            n + 1,
            vec![
                Action::Log("interrupted while verifying; verifying again".into()),
                Action::Verify,
            ],
        ),
        (St::Verifying, E::Started(b)) if b.on_new => rollback_or_fail(
            caps,
            n + 1,
            format!("started {} times without finishing the verification", n + 1),
        ),
        (St::Verifying, E::Started(_)) => rollback_or_fail(
            caps,
            n,
            "the device came back on the old software while verifying".into(),
        ),

        (St::Committing, E::Done | E::NeedsReboot) => {
            finished(St::Succeeded, n, Some(S::AfterCommit))
        }
        (St::Committing, E::Failed(e) | E::Aborted(e)) => {
            rollback_or_fail(caps, n, format!("commit failed: {e}"))
        }
        // The commit is idempotent: do it again, unless the device is not on the new software.
        (St::Committing, E::Started(b)) if b.on_new => go(St::Committing, n, vec![Action::Commit]),
        (St::Committing, E::Started(_)) => rollback_or_fail(
            caps,
            n,
            "the device came back on the old software before the commit".into(),
        ),

        (St::RollingBack, E::Done) => finished(St::RolledBack, n, Some(S::AfterRollback)),
        (St::RollingBack, E::NeedsReboot) => go(St::RollbackRebooting, 0, vec![Action::Reboot]),
        (St::RollingBack, E::Failed(e) | E::Aborted(e)) => go(
            St::Failed,
            n,
            vec![
                Action::Log(format!("rollback failed: {e}")),
                Action::Cleanup,
            ],
        ),
        // The rollback is idempotent: do it again.
        (St::RollingBack, E::Started(_)) => go(St::RollingBack, n, vec![Action::Rollback]),

        (St::RollbackRebooting, E::Done | E::NeedsReboot) => (m, vec![]),
        (St::RollbackRebooting, E::Failed(e) | E::Aborted(e)) => go(
            St::RollbackRebooting,
            n,
            vec![Action::Log(format!(
                "the reboot failed: {e}; the next start goes on"
            ))],
        ),
        (St::RollbackRebooting, E::Started(b)) if !b.on_new => {
            finished(St::RolledBack, n, Some(S::AfterRollback))
        }
        (St::RollbackRebooting, E::Started(_)) if n < MAX_ATTEMPTS => go(
            St::RollbackRebooting,
            n + 1,
            vec![
                Action::Log("still on the new software; rebooting again".into()),
                Action::Reboot,
            ],
        ),
        (St::RollbackRebooting, E::Started(_)) => go(
            St::Failed,
            n + 1,
            vec![
                Action::Log("the device does not boot the old software; giving up".into()),
                Action::Cleanup,
            ],
        ),

        // Terminal states are handled by the first arm; the compiler cannot see it.
        (St::Succeeded | St::Failed | St::RolledBack, _) => (m, vec![]),
    }
}

/// The status reported for a state (the server's deployment statuses).
pub fn report_status(state: State) -> &'static str {
    match state {
        State::Downloading => "downloading",
        State::Installing => "installing",
        State::Rebooting | State::RollbackRebooting => "rebooting",
        State::Verifying | State::Committing => "verifying",
        State::RollingBack => "installing",
        State::Succeeded => "succeeded",
        State::Failed => "failed",
        State::RolledBack => "rolled_back",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RB: Caps = Caps { rollback: true };
    const NO_RB: Caps = Caps { rollback: false };
    const NEW: Boot = Boot {
        on_new: true,
        armed: true,
    };
    const OLD_ARMED: Boot = Boot {
        on_new: false,
        armed: true,
    };
    const OLD: Boot = Boot {
        on_new: false,
        armed: false,
    };

    fn at(state: State) -> Machine {
        Machine { state, attempts: 0 }
    }

    fn next(state: State, e: Event, caps: Caps) -> (State, Vec<Action>) {
        let (m, a) = step(at(state), e, caps);
        (m.state, a)
    }

    fn without_logs(a: Vec<Action>) -> Vec<Action> {
        a.into_iter()
            .filter(|a| !matches!(a, Action::Log(_)))
            .collect()
    }

    #[test]
    fn the_happy_paths() {
        use State::*;
        // file: no reboot.
        assert_eq!(
            next(Downloading, Event::Done, RB),
            (Installing, vec![Action::Install])
        );
        assert_eq!(
            next(Installing, Event::Done, RB),
            (Verifying, vec![Action::Verify])
        );
        assert_eq!(
            next(Verifying, Event::Done, RB),
            (Committing, vec![Action::Commit])
        );
        assert_eq!(
            next(Committing, Event::Done, RB),
            (
                Succeeded,
                vec![
                    Action::Scripts(tender_artifact::ScriptState::AfterCommit),
                    Action::Cleanup
                ]
            )
        );
        // rootfs-ab: a reboot, then the start on the new slot verifies.
        assert_eq!(
            next(Installing, Event::NeedsReboot, RB),
            (Rebooting, vec![Action::Reboot])
        );
        assert_eq!(next(Rebooting, Event::Done, RB), (Rebooting, vec![]));
        let (m, a) = step(at(Rebooting), Event::Started(NEW), RB);
        assert_eq!(
            (m.state, m.attempts, a),
            (Verifying, 1, vec![Action::Verify])
        );
    }

    #[test]
    fn failures_roll_back_when_the_module_can() {
        use State::*;
        for s in [Installing, Verifying, Committing, Rebooting] {
            let (st, a) = next(s, Event::Failed("x".into()), RB);
            assert_eq!(
                (st, without_logs(a)),
                (RollingBack, vec![Action::Rollback]),
                "{s}"
            );
            let (st, a) = next(s, Event::Failed("x".into()), NO_RB);
            assert_eq!(
                (st, without_logs(a)),
                (Failed, vec![Action::Cleanup]),
                "{s}"
            );
        }
        // A before_install script failure: nothing to undo.
        let (st, a) = next(Installing, Event::Aborted("x".into()), RB);
        assert_eq!((st, without_logs(a)), (Failed, vec![Action::Cleanup]));
        assert_eq!(
            without_logs(next(RollingBack, Event::Done, RB).1),
            vec![
                Action::Scripts(tender_artifact::ScriptState::AfterRollback),
                Action::Cleanup
            ]
        );
        assert_eq!(
            next(RollingBack, Event::NeedsReboot, RB).0,
            RollbackRebooting
        );
        assert_eq!(next(RollingBack, Event::Failed("x".into()), RB).0, Failed);
    }

    /// The crash table: what a start in each state leads to. Nothing interrupted before the
    /// commit ends committed, and nothing on the old software after a fallback is committed.
    #[test]
    fn a_start_in_every_state() {
        use State::*;
        let cases = [
            (Downloading, NEW, RB, Failed),
            (Installing, NEW, RB, RollingBack),
            (Installing, OLD, RB, RollingBack),
            (Installing, NEW, NO_RB, Failed),
            (Rebooting, NEW, RB, Verifying),
            (Rebooting, OLD_ARMED, RB, Rebooting),
            (Rebooting, OLD, RB, RollingBack),
            (Verifying, NEW, RB, Verifying),
            (Verifying, OLD, RB, RollingBack),
            (Verifying, OLD_ARMED, RB, RollingBack),
            (Committing, NEW, RB, Committing),
            (Committing, OLD, RB, RollingBack),
            (RollingBack, NEW, RB, RollingBack),
            (RollingBack, OLD, RB, RollingBack),
            (RollbackRebooting, OLD, RB, RolledBack),
            (RollbackRebooting, NEW, RB, RollbackRebooting),
            (Succeeded, OLD, RB, Succeeded),
            (Failed, NEW, RB, Failed),
            (RolledBack, NEW, RB, RolledBack),
        ];
        for (from, boot, caps, to) in cases {
            assert_eq!(
                next(from, Event::Started(boot), caps).0,
                to,
                "{from} {boot:?}"
            );
        }
        // Every non-terminal state has a way forward on a start; terminal ones do nothing.
        for s in State::ALL {
            let (m, a) = step(at(s), Event::Started(NEW), RB);
            assert_eq!(a.is_empty(), s.is_terminal(), "{s} -> {}", m.state);
        }
    }

    #[test]
    fn attempts_are_bounded() {
        use State::*;
        let mut m = at(Rebooting);
        let mut starts = 0;
        while m.state == Rebooting {
            m = step(m, Event::Started(OLD_ARMED), RB).0;
            starts += 1;
            assert!(starts <= MAX_ATTEMPTS + 1);
        }
        assert_eq!(m.state, RollingBack);

        let mut m = at(Verifying);
        while m.state == Verifying {
            m = step(m, Event::Started(NEW), RB).0;
            assert!(m.attempts <= MAX_ATTEMPTS + 1);
        }
        assert_eq!(m.state, RollingBack);

        let mut m = Machine {
            state: RollbackRebooting,
            attempts: 0,
        };
        while m.state == RollbackRebooting {
            m = step(m, Event::Started(NEW), RB).0;
            assert!(m.attempts <= MAX_ATTEMPTS + 1);
        }
        assert_eq!(m.state, Failed);
    }

    /// Walks every event from every state: no transition leaves a terminal state, and the only
    /// way into `Succeeded` is a finished commit.
    #[test]
    fn succeeded_only_after_a_commit() {
        let events = [
            Event::Done,
            Event::NeedsReboot,
            Event::Failed("f".into()),
            Event::Aborted("a".into()),
            Event::Started(NEW),
            Event::Started(OLD),
            Event::Started(OLD_ARMED),
        ];
        for s in State::ALL {
            for e in &events {
                for caps in [RB, NO_RB] {
                    let (m, _) = step(at(s), e.clone(), caps);
                    if s.is_terminal() {
                        assert_eq!(m.state, s);
                    }
                    if m.state == State::Succeeded && s != State::Succeeded {
                        assert_eq!(s, State::Committing);
                        assert!(matches!(e, Event::Done | Event::NeedsReboot), "{e:?}");
                    }
                }
            }
        }
    }
}
