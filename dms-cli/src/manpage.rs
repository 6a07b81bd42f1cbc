//! The manual page, from the same flag definitions as `--help`: the usual
//! top sections, then every command with its arguments on one page
//! (`dms.1`), rather than a page per command that nothing installs.

use clap::{Arg, Command};
use clap_mangen::roff::{bold, italic, roman, Inline, Roff};
use std::io::Write;

pub fn render(mut cmd: Command, w: &mut dyn Write) -> std::io::Result<()> {
    cmd.build();
    let man = clap_mangen::Man::new(cmd.clone()).section("1");
    man.render_title(w)?;
    man.render_name_section(w)?;
    man.render_synopsis_section(w)?;
    man.render_description_section(w)?;
    man.render_options_section(w)?;
    commands(&cmd).to_writer(w)?;
    extra().to_writer(w)?;
    man.render_version_section(w)
}

/// The commands somebody types: not hidden ones, not clap's own `help`.
fn shown(cmd: &Command) -> impl Iterator<Item = &Command> {
    cmd.get_subcommands()
        .filter(|c| !c.is_hide_set() && c.get_name() != "help")
}

fn commands(cmd: &Command) -> Roff {
    let mut roff = Roff::new();
    roff.control("SH", ["COMMANDS"]);
    for sub in shown(cmd) {
        let nested: Vec<&Command> = shown(sub).collect();
        if nested.is_empty() {
            command(&mut roff, &[cmd, sub]);
        } else {
            for inner in nested {
                command(&mut roff, &[cmd, sub, inner]);
            }
        }
    }
    roff
}

fn command(roff: &mut Roff, path: &[&Command]) {
    let names: Vec<&str> = path.iter().map(|c| c.get_name()).collect();
    let Some(cmd) = path.last() else {
        return;
    };
    let aliases: Vec<&str> = cmd.get_visible_aliases().collect();
    let mut title = names.join(" ");
    if !aliases.is_empty() {
        title.push_str(&format!(" (also {})", aliases.join(", ")));
    }
    roff.control("SS", [title.as_str()]);
    let mut synopsis: Vec<Inline> = vec![bold(names.join(" "))];
    for a in arguments(cmd) {
        synopsis.push(roman(" "));
        let required = a.is_required_set();
        if !required {
            synopsis.push(roman("["));
        }
        synopsis.extend(usage(a));
        if !required {
            synopsis.push(roman("]"));
        }
    }
    roff.text(synopsis);
    if let Some(about) = cmd.get_long_about().or_else(|| cmd.get_about()) {
        roff.control("PP", []);
        roff.text([roman(about.to_string())]);
    }
    for a in arguments(cmd) {
        roff.control("TP", []);
        roff.text(usage(a));
        if let Some(help) = a.get_long_help().or_else(|| a.get_help()) {
            roff.text([roman(help.to_string())]);
        }
    }
}

/// A command's own arguments (not `--help`, which every command has).
fn arguments(cmd: &Command) -> impl Iterator<Item = &Arg> {
    cmd.get_arguments()
        .filter(|a| !a.is_hide_set() && a.get_id() != "help")
}

fn usage(a: &Arg) -> Vec<Inline> {
    let value = a
        .get_value_names()
        .and_then(|v| v.first())
        .map(|v| v.to_string())
        .unwrap_or_else(|| a.get_id().to_string());
    let takes = a.get_num_args().is_some_and(|n| n.takes_values());
    let mut out = Vec::new();
    match (a.get_short(), a.get_long()) {
        (Some(s), Some(l)) => out.push(bold(format!("-{s}, --{l}"))),
        (Some(s), None) => out.push(bold(format!("-{s}"))),
        (None, Some(l)) => out.push(bold(format!("--{l}"))),
        (None, None) => {
            out.push(italic(format!("<{value}>")));
            return out;
        }
    }
    if takes {
        out.push(roman(" "));
        out.push(italic(format!("<{value}>")));
    }
    out
}

fn extra() -> Roff {
    let mut roff = Roff::new();
    roff.control("SH", ["EXIT STATUS"]);
    roff.text([roman(
        "0 on success, 1 when the operation failed, 2 for bad usage. Every error is one line on standard error.",
    )]);
    roff.control("SH", ["ENVIRONMENT"]);
    for (name, what) in [
        (
            "DMS_RUN_DIR",
            "the runtime directory (default /run/dms for root, else $XDG_RUNTIME_DIR/dms)",
        ),
        (
            "DMS_HELD_LIMIT",
            "the daemon's bound on held writes per store, as --held-limit",
        ),
        (
            "DMS_FUSE_THREADS",
            "threads serving the mapper files (default 16)",
        ),
        ("DMS_ROLLBACK_WORKERS", "threads a rollback merges with"),
        ("RUST_LOG", "the daemon's log level"),
    ] {
        roff.control("TP", []);
        roff.text([bold(name)]);
        roff.text([roman(what)]);
    }
    roff.control("SH", ["FILES"]);
    roff.text([roman(
        "$DMS_RUN_DIR/mapper/<dm_dev> (each dm_dev as a file), nbd.sock, control.sock, registry.json, daemon.log.",
    )]);
    roff.control("SH", ["SEE ALSO"]);
    roff.text([roman(
        "losetup(8), mount(8), qemu-io(1), nbdinfo(1); the project's docs/cli.md and docs/daemon.md.",
    )]);
    roff
}
