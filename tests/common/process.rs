//! A child process of the real binary: its stdout read line by line on a
//! thread (so a wait is bounded), signals, a bounded wait for the exit, and
//! a kill if the test fails before it exits.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Instant;

use super::STEP;

pub struct Child {
    pub child: std::process::Child,
    stdout: mpsc::Receiver<String>,
    stderr: PathBuf,
}

impl Child {
    /// Spawns `cmd` with stdout piped and stderr written to `stderr`.
    pub fn spawn(cmd: &mut Command, stderr: &Path) -> Child {
        let log = std::fs::File::create(stderr).expect("log file");
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn fieldseal");
        let out = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Child {
            child,
            stdout: rx,
            stderr: stderr.to_path_buf(),
        }
    }

    /// Stdout lines up to and including the first one containing `marker`.
    pub fn read_until(&mut self, marker: &str) -> Vec<String> {
        let deadline = Instant::now() + STEP;
        let mut lines = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout.recv_timeout(left) {
                Ok(l) => {
                    let done = l.contains(marker);
                    lines.push(l);
                    if done {
                        return lines;
                    }
                }
                Err(_) => panic!(
                    "no {marker:?} on stdout; got {lines:?}; stderr {}",
                    std::fs::read_to_string(&self.stderr).unwrap_or_default()
                ),
            }
        }
    }

    pub fn signal(&self, sig: &str) {
        let pid = self.child.id().to_string();
        let ok = Command::new("kill")
            .args([sig, &pid])
            .status()
            .expect("kill");
        assert!(ok.success(), "kill {sig} {pid}");
    }

    /// Waits (bounded) for the exit code.
    pub fn wait(&mut self) -> Option<i32> {
        let deadline = Instant::now() + STEP;
        loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                return s.code();
            }
            assert!(Instant::now() < deadline, "fieldseal did not exit");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
