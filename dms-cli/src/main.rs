//! The `dms` command: thin verbs over the daemon. Exit codes: 0 success,
//! 1 the operation failed, 2 bad usage. Errors are one line on stderr.

mod client;
mod daemon;
mod demo;
mod frames;
mod inspect;
mod manpage;
mod paths;
mod progress;
mod proto;
mod space;
mod tables;
mod transfer;

use anyhow::Result;
use clap::{CommandFactory, Parser, Subcommand};
use dms_engine::table::quote;
use proto::{Inspect, Request, Response};
use std::io::Write;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "dms",
    version,
    about = "Multi-version snapshots of block devices in one shared COW device"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the dm_dev of an origin, or with <tag> of a snapshot.
    #[command(visible_alias = "c")]
    Create {
        dm_dev: String,
        origin_dev: String,
        cow_dev: String,
        /// Expose snapshot <tag> instead of the origin.
        tag: Option<u32>,
        /// Bind the origin device to the COW device (its first use).
        #[arg(short = 'b')]
        bind: bool,
        /// Format the COW device (refused if it holds a store).
        #[arg(short = 'f')]
        format: bool,
        /// Format the COW device even if it holds a store.
        #[arg(short = 'F')]
        force_format: bool,
        /// Chunk size in 4 KiB pages (1, 2, 4 ... 64), with -f or -F.
        #[arg(short = 'c')]
        chunk_size: Option<u32>,
        /// The origin's identity in the COW device (default: its path).
        #[arg(short = 'i')]
        origin_id: Option<String>,
        /// Attach a loop device to the exposed file and print its path.
        #[arg(long = "loop")]
        loop_dev: bool,
        /// Expose it read-only (file and NBD export).
        #[arg(long)]
        read_only: bool,
    },
    /// Remove a dm_dev.
    #[command(visible_alias = "r")]
    Remove {
        dm_dev: String,
        /// Remove even if it is open or mounted.
        #[arg(long)]
        force: bool,
    },
    /// Take a snapshot of the origin, or with <tag> of snapshot <tag>.
    #[command(visible_alias = "s")]
    Snapshot {
        dm_dev: String,
        tag: Option<u32>,
        #[arg(short = 'm')]
        memo: Option<String>,
    },
    /// Delete snapshot <tag>; without <tag>, unbind the origin and remove its dm_dev.
    #[command(visible_alias = "d")]
    Delete { dm_dev: String, tag: Option<u32> },
    /// Roll snapshot <tag> back into the origin.
    #[command(visible_alias = "b")]
    Rollback {
        dm_dev: String,
        tag: u32,
        /// Return at once; the rollback goes on in the background.
        #[arg(short = 'b')]
        background: bool,
    },
    /// List snapshots.
    #[command(visible_alias = "l")]
    List {
        dm_dev: Option<String>,
        /// The same data as JSON.
        #[arg(long)]
        json: bool,
    },
    /// The raw dm-snap-mv strings, as dmsetup takes them.
    Dmsetup {
        #[command(subcommand)]
        command: Dmsetup,
    },
    /// Run the daemon in the foreground.
    Daemon {
        /// Also serve NBD on this TCP address (e.g. 127.0.0.1:10809).
        #[arg(long)]
        nbd_listen: Option<String>,
        /// Memory for writes held until their copy-outs are committed, per
        /// store (bytes; K, M, G suffixes); writers wait at the bound.
        /// Default 64M; also DMS_HELD_LIMIT.
        #[arg(long, value_parser = parse_bytes)]
        held_limit: Option<u64>,
        /// The log file the daemon's stderr goes to, reopened on SIGHUP
        /// (a daemon that `dms` starts logs to <run dir>/daemon.log).
        #[arg(long)]
        log: Option<std::path::PathBuf>,
        /// TLS for NBD (STARTTLS), on the unix socket and on TCP: off, on
        /// (for clients that ask) or require (every other option refused
        /// before STARTTLS).
        #[arg(long, value_enum, default_value_t = daemon::TlsMode::Off)]
        tls: daemon::TlsMode,
        /// The directory with server-cert.pem, server-key.pem and (for
        /// --tls-verify-peer) ca-cert.pem.
        #[arg(long)]
        tls_certificates: Option<std::path::PathBuf>,
        /// Require a client certificate signed by ca-cert.pem.
        #[arg(long)]
        tls_verify_peer: bool,
    },
    /// Print a completion script for a shell (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Print the manual page (roff), as docs/dms.1 holds it.
    #[command(hide = true)]
    Manpage,
    /// Stop the daemon cleanly.
    Shutdown {
        #[arg(long)]
        force: bool,
    },
    /// Wait until background work (cleaning, rollbacks) is done.
    Settle,
    /// The space of an origin's snapshots: the copies each owns, how many
    /// of them others read too, and what deleting it would free.
    Du(space::DuCmd),
    /// Delete the snapshots a rule does not keep (never an exposed one).
    Prune(space::PruneCmd),
    /// Use the new space of a COW device made larger underneath, and give
    /// the origin of <dm_dev> its device's new size, online (its snapshots
    /// keep theirs).
    Grow(space::GrowCmd),
    /// Show or set a store's space policy: a low-water mark and its hook,
    /// and what a write does when the COW device is full.
    Policy(space::PolicyCmd),
    /// Write a stream of snapshot <tag> to stdout: all of it, or with
    /// --from only what differs from an older tag.
    Send(transfer::SendCmd),
    /// Read a stream from stdin into an origin; print the new snapshot's tag.
    Receive(transfer::ReceiveCmd),
    /// Check a store: every metadata block, the version trees, and the
    /// allocation (no leaked or doubly used chunk). Exit 0 when clean.
    /// Through the daemon when it holds the store (after a commit).
    Check {
        cow_dev: String,
        #[arg(long)]
        json: bool,
    },
    /// Print a store's origins, versions and exceptions (its committed
    /// state, through the daemon when it holds the store).
    Dump {
        cow_dev: String,
        /// Only this origin.
        #[arg(short = 'i', long = "origin")]
        origin_id: Option<String>,
        /// Only the exceptions this tag owns.
        #[arg(long)]
        tag: Option<u32>,
        #[arg(long)]
        json: bool,
    },
    /// The chunks that differ between two tags of an origin, from metadata
    /// alone: what an incremental backup from <tag_a> to <tag_b> copies.
    Delta {
        cow_dev: String,
        tag_a: u32,
        tag_b: u32,
        /// The origin (needed when the store holds several).
        #[arg(short = 'i', long = "origin")]
        origin_id: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Run the snapshot life cycle on image files in DIR, without the daemon.
    Demo {
        #[arg(long, default_value = "dms-demo")]
        dir: std::path::PathBuf,
        #[arg(long, default_value_t = 64)]
        size_mib: u64,
        #[arg(short = 'c', long, default_value_t = 1)]
        chunk_pages: u32,
    },
}

#[derive(Subcommand)]
enum Dmsetup {
    /// dmsetup create <dm_dev> --table '0 <sectors> dm-snap-mv <args>'
    Create {
        dm_dev: String,
        #[arg(long)]
        table: String,
        #[arg(long = "loop")]
        loop_dev: bool,
        #[arg(long)]
        read_only: bool,
    },
    /// dmsetup message <dm_dev> <sector> <message>
    Message {
        dm_dev: String,
        sector: u64,
        #[arg(required = true, num_args = 1.., allow_hyphen_values = true, trailing_var_arg = true)]
        args: Vec<String>,
    },
    Status {
        dm_dev: Option<String>,
    },
    Table {
        dm_dev: Option<String>,
    },
    Remove {
        #[arg(long, short = 'f')]
        force: bool,
        dm_dev: String,
    },
    #[command(name = "remove_all")]
    RemoveAll {
        #[arg(long, short = 'f')]
        force: bool,
    },
}

/// A failure with its exit code.
pub(crate) struct Exit(pub u8, pub String);

pub(crate) fn send(req: &Request) -> Result<Response, Exit> {
    let start = !matches!(req, Request::Shutdown { .. });
    client::call(req, start).map_err(|e| Exit(1, format!("{e:#}")))
}

fn message(dm_dev: &str, args: Vec<String>) -> Request {
    Request::Message {
        name: dm_dev.to_string(),
        args,
    }
}

/// A byte count with an optional binary suffix: 4096, 512K, 64M, 1G.
fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mul) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let mul: u64 = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                _ => return Err(format!("{s:?}: the suffix must be K, M or G")),
            };
            (&t[..i], mul)
        }
        _ => (t, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mul))
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("{s:?} is not a byte count (e.g. 64M)"))
}

fn run(cmd: Command) -> Result<Response, Exit> {
    match cmd {
        Command::Create {
            dm_dev,
            origin_dev,
            cow_dev,
            tag,
            bind,
            format,
            force_format,
            chunk_size,
            origin_id,
            loop_dev,
            read_only,
        } => {
            let table = tables::create_table(
                &origin_dev,
                &cow_dev,
                tag,
                (bind, format, force_format, chunk_size, origin_id),
            )?;
            send(&Request::Create {
                name: dm_dev,
                table,
                loop_dev,
                read_only,
            })
        }
        Command::Remove { dm_dev, force } => send(&Request::Remove {
            name: dm_dev,
            force,
        }),
        Command::Snapshot { dm_dev, tag, memo } => {
            let mut args = match tag {
                Some(t) => vec!["ss".to_string(), t.to_string()],
                None => vec!["so".to_string()],
            };
            if let Some(m) = memo {
                args.push("-m".into());
                args.push(m);
            }
            send(&message(&dm_dev, args))
        }
        Command::Delete { dm_dev, tag } => {
            let args = match tag {
                Some(t) => vec!["ds".to_string(), t.to_string()],
                None => vec!["do".to_string()],
            };
            send(&message(&dm_dev, args))
        }
        Command::Rollback {
            dm_dev,
            tag,
            background,
        } => {
            let mut args = vec!["rs".to_string(), tag.to_string()];
            if background {
                args.push("-b".into());
            }
            let progress = (!background && std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .then(|| progress::spawn(dm_dev.clone()));
            let r = send(&message(&dm_dev, args));
            if let Some(p) = progress {
                p.stop();
            }
            r
        }
        Command::List { dm_dev, json } => {
            let mut r = send(&Request::List { name: dm_dev })?;
            if json && r.code == 0 {
                let data = r.data.take().unwrap_or_default();
                r.output = serde_json::to_string_pretty(&data).unwrap_or_default() + "\n";
            }
            Ok(r)
        }
        Command::Dmsetup { command } => match command {
            Dmsetup::Create {
                dm_dev,
                table,
                loop_dev,
                read_only,
            } => {
                let dms_engine::table::Table { sectors, target } =
                    dms_engine::table::Table::parse(&table).map_err(|e| Exit(2, e.to_string()))?;
                let table = tables::absolute_table(Some(sectors), &target)?;
                send(&Request::Create {
                    name: dm_dev,
                    table,
                    loop_dev,
                    read_only,
                })
            }
            Dmsetup::Message {
                dm_dev,
                sector,
                args,
            } => {
                if sector != 0 {
                    return Err(Exit(2, format!("sector {sector}: messages go to sector 0")));
                }
                send(&message(&dm_dev, args))
            }
            Dmsetup::Status { dm_dev } => send(&Request::Status { name: dm_dev }),
            Dmsetup::Table { dm_dev } => send(&Request::Table { name: dm_dev }),
            Dmsetup::Remove { force, dm_dev } => send(&Request::Remove {
                name: dm_dev,
                force,
            }),
            Dmsetup::RemoveAll { force } => send(&Request::RemoveAll { force }),
        },
        Command::Shutdown { force } => {
            let pid = std::fs::read_to_string(paths::run_dir().join("daemon.pid"))
                .ok()
                .and_then(|s| s.trim().parse::<i32>().ok());
            match client::call(&Request::Shutdown { force }, false) {
                Ok(r) if r.code == 0 => {
                    // Return once the daemon is gone and its devices are free.
                    let start = std::time::Instant::now();
                    // SAFETY: kill(pid, 0) only checks that the process exists.
                    while pid.is_some_and(alive) {
                        if start.elapsed() > std::time::Duration::from_secs(30) {
                            return Err(Exit(1, "the daemon did not exit within 30 s".into()));
                        }
                        std::thread::sleep(std::time::Duration::from_millis(20));
                    }
                    Ok(r)
                }
                Ok(r) => Ok(r),
                Err(_) => Ok(Response::ok(String::new())),
            }
        }
        Command::Settle => send(&Request::Settle),
        Command::Send(cmd) => cmd.run(),
        Command::Du(cmd) => cmd.run(),
        Command::Prune(cmd) => cmd.run(),
        Command::Grow(cmd) => cmd.run(),
        Command::Policy(cmd) => cmd.run(),
        Command::Receive(cmd) => cmd.run(),
        Command::Completions { shell } => {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "dms", &mut out);
            Ok(Response::ok(String::from_utf8_lossy(&out).into_owned()))
        }
        Command::Manpage => {
            let mut out = Vec::new();
            manpage::render(Cli::command(), &mut out).map_err(|e| Exit(1, e.to_string()))?;
            Ok(Response::ok(String::from_utf8_lossy(&out).into_owned()))
        }
        Command::Check { cow_dev, json } => inspect::run(&cow_dev, Inspect::Check { json }),
        Command::Dump {
            cow_dev,
            origin_id,
            tag,
            json,
        } => inspect::run(
            &cow_dev,
            Inspect::Dump {
                origin_id,
                tag,
                json,
            },
        ),
        Command::Delta {
            cow_dev,
            tag_a,
            tag_b,
            origin_id,
            json,
        } => inspect::run(
            &cow_dev,
            Inspect::Delta {
                origin_id,
                tag_a,
                tag_b,
                json,
            },
        ),
        Command::Daemon {
            nbd_listen,
            held_limit,
            log,
            tls,
            tls_certificates,
            tls_verify_peer,
        } => match daemon::run(daemon::Options {
            nbd_listen,
            tls: daemon::TlsOptions {
                mode: tls,
                certificates: tls_certificates.map(|p| std::path::absolute(&p).unwrap_or(p)),
                verify_peer: tls_verify_peer,
            },
            log: log.map(|p| std::path::absolute(&p).unwrap_or(p)),
            held_limit: held_limit.or_else(|| {
                std::env::var("DMS_HELD_LIMIT")
                    .ok()
                    .and_then(|v| parse_bytes(&v).ok())
            }),
        }) {
            Ok(()) => Ok(Response::ok(String::new())),
            Err(e) => Err(Exit(1, format!("{e:#}"))),
        },
        Command::Demo {
            dir,
            size_mib,
            chunk_pages,
        } => match demo::run(&dir, size_mib, chunk_pages) {
            Ok(()) => Ok(Response::ok(String::new())),
            Err(e) => Err(Exit(1, format!("{e:#}"))),
        },
    }
}

/// Whether a process runs (a zombie, exited but not reaped, does not).
fn alive(pid: i32) -> bool {
    // SAFETY: kill(pid, 0) only checks that the process exists.
    if unsafe { libc::kill(pid, 0) } != 0 {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rsplit_once(") ")
            .is_none_or(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(cli.command, Command::Daemon { .. }) {
        tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "info".into()),
            )
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .init();
    }
    match run(cli.command) {
        Ok(r) => {
            let mut out = std::io::stdout().lock();
            // A closed pipe (dms list | head) is not an error.
            let _ = out.write_all(r.output.as_bytes());
            if r.code != 0 {
                eprintln!("dms: {}", r.error.unwrap_or_else(|| "failed".into()));
            }
            ExitCode::from(r.code)
        }
        Err(Exit(code, msg)) => {
            eprintln!("dms: {msg}");
            ExitCode::from(code)
        }
    }
}
