//! Running scripts, health checks and update modules: no shell, stdin closed, a timeout past
//! which the whole process group is killed, output kept up to a bound. Blocking (the update runs
//! on a thread of its own).

use std::ffi::OsString;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Most bytes of stdout and of stderr kept.
pub const MAX_OUTPUT: usize = 16 * 1024;

/// A program that ran to its end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ran {
    /// The exit code (`None`: killed by a signal).
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// One line about a failure: the exit status and the end of stderr.
    pub fn failure(&self, what: &str) -> String {
        let status = match self.code {
            Some(c) => format!("exit status {c}"),
            None => "killed by a signal".into(),
        };
        let tail: String = {
            let t = self.stderr.trim();
            let skip = t.chars().count().saturating_sub(300);
            t.chars()
                .skip(skip)
                .collect::<String>()
                .replace('\n', " | ")
        };
        if tail.is_empty() {
            format!("{what} failed ({status})")
        } else {
            format!("{what} failed ({status}): {tail}")
        }
    }
}

fn reader(pipe: Option<impl Read + Send + 'static>) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut kept = Vec::new();
        if let Some(mut p) = pipe {
            let mut chunk = [0u8; 8192];
            loop {
                match p.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let room = MAX_OUTPUT.saturating_sub(kept.len());
                        kept.extend_from_slice(&chunk[..n.min(room)]);
                    }
                }
            }
        }
        let _ = tx.send(String::from_utf8_lossy(&kept).into_owned());
    });
    rx
}

fn kill_group(pid: u32) {
    if let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    {
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
}

/// Runs `program` with `args` and extra `env` (variables starting with `TENDER_AGENT_` are
/// removed); `Err` when it cannot start or runs past `timeout` (then its process group is
/// killed).
pub fn run(
    program: &Path,
    args: &[OsString],
    env: &[(String, String)],
    timeout: Duration,
) -> Result<Ran, String> {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    for (key, _) in std::env::vars_os() {
        if key.as_encoded_bytes().starts_with(b"TENDER_AGENT_") {
            cmd.env_remove(key);
        }
    }
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    let mut attempt = 0u64;
    let mut child = loop {
        match cmd.spawn() {
            // A script written a moment ago may still be open for writing in a forked child.
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && attempt < 5 => {
                attempt += 1;
                std::thread::sleep(Duration::from_millis(20 * attempt));
            }
            Err(e) => return Err(format!("cannot start {}: {e}", program.display())),
            Ok(c) => break c,
        }
    };
    let pid = child.id();
    let out = reader(child.stdout.take());
    let err = reader(child.stderr.take());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    match rx.recv_timeout(timeout) {
        Ok(Ok(status)) => {
            // A background process may keep the pipes open: do not wait for it long.
            let grace = Duration::from_secs(2);
            Ok(Ran {
                code: status.code(),
                stdout: out.recv_timeout(grace).unwrap_or_default(),
                stderr: err.recv_timeout(grace).unwrap_or_default(),
            })
        }
        Ok(Err(e)) => Err(format!("waiting for {}: {e}", program.display())),
        Err(_) => {
            kill_group(pid);
            let _ = rx.recv_timeout(Duration::from_secs(5));
            Err(format!(
                "{} ran longer than {} s and was killed",
                program.display(),
                timeout.as_secs()
            ))
        }
    }
}

/// Runs a configured command line (`argv[0]` the program).
pub fn run_argv(
    argv: &[String],
    env: &[(String, String)],
    timeout: Duration,
) -> Result<Ran, String> {
    let Some((program, args)) = argv.split_first() else {
        return Err("nothing to run".into());
    };
    let args: Vec<OsString> = args.iter().map(OsString::from).collect();
    run(Path::new(program), &args, env, timeout)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Vec<String> {
        vec!["/bin/sh".into(), "-c".into(), script.into()]
    }

    #[test]
    fn output_status_and_timeout() {
        let r = run_argv(
            &sh("echo out; echo \"$X\" >&2; exit 3"),
            &[("X".into(), "err".into())],
            Duration::from_secs(20),
        )
        .unwrap();
        assert_eq!(
            (r.code, r.stdout.as_str(), r.stderr.as_str()),
            (Some(3), "out\n", "err\n")
        );
        assert!(
            r.failure("the script").contains("exit status 3): err"),
            "{}",
            r.failure("x")
        );
        let e = run_argv(&sh("sleep 60 & sleep 60"), &[], Duration::from_millis(300)).unwrap_err();
        assert!(e.contains("killed"), "{e}");
        assert!(run_argv(&["/nonexistent".into()], &[], Duration::from_secs(1)).is_err());
    }
}
