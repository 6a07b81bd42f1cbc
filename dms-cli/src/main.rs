//! The `dms` command. For now: `dms demo`, which runs the engine end to end
//! on image files it creates.

mod demo;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "dms",
    version,
    about = "Multi-version snapshots for block devices"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the snapshot life cycle on image files in DIR (created if needed).
    Demo {
        /// Where to put origin.img and cow.img.
        #[arg(long, default_value = "dms-demo")]
        dir: std::path::PathBuf,
        /// Origin size in MiB.
        #[arg(long, default_value_t = 64)]
        size_mib: u64,
        /// Chunk size in 4 KiB pages.
        #[arg(short = 'c', long, default_value_t = 1)]
        chunk_pages: u32,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let res = match cli.command {
        Command::Demo {
            dir,
            size_mib,
            chunk_pages,
        } => demo::run(&dir, size_mib, chunk_pages),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dms: {e:#}");
            ExitCode::from(1)
        }
    }
}
