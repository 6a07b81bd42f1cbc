//! Talking to the daemon, starting it when needed.

use crate::paths;
use crate::proto::{Request, Response};
use anyhow::{anyhow, Context, Result};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

fn connect(sock: &Path) -> std::io::Result<UnixStream> {
    UnixStream::connect(sock)
}

/// Start `dms daemon` detached, logging to the runtime directory.
fn spawn_daemon(run: &Path) -> Result<()> {
    std::fs::create_dir_all(run).with_context(|| format!("creating {}", run.display()))?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(run.join("daemon.log"))?;
    let exe = std::env::current_exe()?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("daemon")
        .arg("--log")
        .arg(run.join("daemon.log"))
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    use std::os::unix::process::CommandExt;
    // SAFETY: setsid in the child before exec; no allocation happens there.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    cmd.spawn().context("starting the daemon")?;
    Ok(())
}

/// Send one request; start the daemon first if `start` and none answers.
pub fn call(req: &Request, start: bool) -> Result<Response> {
    let stream = open(req, start)?;
    let mut reader = BufReader::new(&stream);
    let mut resp = String::new();
    reader.read_line(&mut resp)?;
    if resp.is_empty() {
        return Err(anyhow!("the daemon closed the connection"));
    }
    Ok(serde_json::from_str(&resp)?)
}

/// Connect and write the request line; the caller reads the answer (a
/// line, or frames for send and receive).
pub fn open(req: &Request, start: bool) -> Result<UnixStream> {
    let run = paths::run_dir();
    let sock = paths::control_socket(&run);
    let stream = match connect(&sock) {
        Ok(s) => s,
        Err(_) if start => {
            spawn_daemon(&run)?;
            let t = Instant::now();
            loop {
                match connect(&sock) {
                    Ok(s) => break s,
                    Err(e) if t.elapsed() > Duration::from_secs(15) => {
                        return Err(anyhow!(
                            "the daemon did not start ({e}); see {}",
                            run.join("daemon.log").display()
                        ))
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
        Err(e) => return Err(anyhow!("no daemon is running ({}: {e})", sock.display())),
    };
    let mut line = serde_json::to_string(req)?;
    line.push('\n');
    (&stream).write_all(line.as_bytes())?;
    Ok(stream)
}
