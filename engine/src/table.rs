//! The dm-snap-mv target and message strings, parsed and printed.
//!
//! Target: `co <origin_dev> <cow_dev> [-i <origin_id>] [-b [-F|-f [-c <chunk>]]]`
//! or `cs <origin_dev> <cow_dev> <tag> [-i <origin_id>]`, after
//! `<start> <sectors> dm-snap-mv` in a table line. Messages: `so [-m memo]`,
//! `ss <tag> [-m memo]`, `do`, `ds <tag>`, `rs <tag> [-b]`. The `dms` verbs
//! are translated into these strings, so both share this parser.

use std::fmt;

/// What is wrong with a table or message string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError(pub String);

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ParseError {}

fn err<T>(msg: impl Into<String>) -> Result<T, ParseError> {
    Err(ParseError(msg.into()))
}

/// How to prepare the COW device when creating an origin dm_dev.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `-f`: format, refusing a device that already holds a store.
    IfEmpty,
    /// `-F`: format even over an existing store.
    Force,
}

/// A parsed target (the part after `dm-snap-mv`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// `co`: the origin's dm_dev.
    Origin {
        origin_dev: String,
        cow_dev: String,
        origin_id: Option<String>,
        bind: bool,
        format: Option<Format>,
        chunk_pages: Option<u32>,
    },
    /// `cs`: a snapshot's dm_dev.
    Snapshot {
        origin_dev: String,
        cow_dev: String,
        tag: u32,
        origin_id: Option<String>,
    },
}

impl Target {
    pub fn origin_dev(&self) -> &str {
        match self {
            Target::Origin { origin_dev, .. } | Target::Snapshot { origin_dev, .. } => origin_dev,
        }
    }

    pub fn cow_dev(&self) -> &str {
        match self {
            Target::Origin { cow_dev, .. } | Target::Snapshot { cow_dev, .. } => cow_dev,
        }
    }

    /// The origin id: `-i`, or the origin device as given.
    pub fn origin_id(&self) -> &str {
        match self {
            Target::Origin {
                origin_id,
                origin_dev,
                ..
            }
            | Target::Snapshot {
                origin_id,
                origin_dev,
                ..
            } => origin_id.as_deref().unwrap_or(origin_dev),
        }
    }

    /// 0 for the origin.
    pub fn tag(&self) -> u32 {
        match self {
            Target::Origin { .. } => 0,
            Target::Snapshot { tag, .. } => *tag,
        }
    }
}

/// A parsed message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    SnapshotOrigin { memo: String },
    SnapshotOf { tag: u32, memo: String },
    DeleteOrigin,
    DeleteSnapshot { tag: u32 },
    Rollback { tag: u32, background: bool },
}

fn parse_tag(s: &str) -> Result<u32, ParseError> {
    s.parse::<u32>()
        .map_err(|_| ParseError(format!("invalid tag {s:?}: expected a number")))
}

/// Split short flags: `-bF` -> `-b -F`; `-c4` -> `-c 4`.
fn expand(args: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for a in args {
        let b = a.as_bytes();
        if b.len() > 2 && b[0] == b'-' && b[1] != b'-' && b[1].is_ascii_alphabetic() {
            let mut i = 1;
            while i < b.len() {
                let c = b[i] as char;
                out.push(format!("-{c}"));
                i += 1;
                if matches!(c, 'c' | 'i' | 'm') && i < b.len() {
                    out.push(a[i..].to_string());
                    break;
                }
            }
        } else {
            out.push(a.clone());
        }
    }
    out
}

fn value(args: &[String], i: &mut usize, flag: &str) -> Result<String, ParseError> {
    *i += 1;
    match args.get(*i) {
        Some(v) => Ok(v.clone()),
        None => err(format!("{flag} needs a value")),
    }
}

/// Parse target arguments (`co ...` or `cs ...`).
pub fn parse_target(args: &[String]) -> Result<Target, ParseError> {
    let args = expand(args);
    let Some(cmd) = args.first() else {
        return err("empty target: expected co or cs");
    };
    let mut pos = Vec::new();
    let (mut id, mut bind, mut fmt, mut chunk) = (None, false, None, None);
    let mut i = 1;
    while i < args.len() {
        match args[i].as_str() {
            "-i" => id = Some(value(&args, &mut i, "-i")?),
            "-b" => bind = true,
            "-f" | "-F" => {
                let f = if args[i] == "-F" {
                    Format::Force
                } else {
                    Format::IfEmpty
                };
                if fmt.is_some_and(|x| x != f) {
                    return err("-f and -F exclude each other");
                }
                fmt = Some(f);
            }
            "-c" => {
                let v = value(&args, &mut i, "-c")?;
                let n: u32 = v
                    .parse()
                    .map_err(|_| ParseError(format!("invalid chunk size {v:?}")))?;
                if !(1..=64).contains(&n) || !n.is_power_of_two() {
                    return err(format!(
                        "chunk size {n} is invalid: it must be a power of two from 1 to 64 pages"
                    ));
                }
                chunk = Some(n);
            }
            s if s.starts_with('-') && s.len() > 1 => return err(format!("unknown option {s}")),
            s => pos.push(s.to_string()),
        }
        i += 1;
    }
    if id.as_deref() == Some("") {
        return err("-i needs a non-empty origin id");
    }
    if let Some(v) = id.as_deref().filter(|v| v.starts_with('-')) {
        // `-i -b` is a forgotten id far more often than an id; and an id
        // that looks like an option could not be printed back unambiguously.
        return err(format!("invalid origin id {v:?}: it cannot start with '-'"));
    }
    match cmd.as_str() {
        "co" => {
            let [origin_dev, cow_dev] = <[String; 2]>::try_from(pos).map_err(|p| {
                ParseError(format!(
                    "co takes <origin_dev> <cow_dev>, got {} argument(s)",
                    p.len()
                ))
            })?;
            if fmt.is_some() && !bind {
                return err("-f/-F format the COW device only together with -b");
            }
            if chunk.is_some() && fmt.is_none() {
                return err("-c sets the chunk size only together with -f or -F");
            }
            Ok(Target::Origin {
                origin_dev,
                cow_dev,
                origin_id: id,
                bind,
                format: fmt,
                chunk_pages: chunk,
            })
        }
        "cs" => {
            if bind || fmt.is_some() || chunk.is_some() {
                return err("cs takes no -b, -f, -F or -c");
            }
            let [origin_dev, cow_dev, tag] = <[String; 3]>::try_from(pos).map_err(|p| {
                ParseError(format!(
                    "cs takes <origin_dev> <cow_dev> <tag>, got {} argument(s)",
                    p.len()
                ))
            })?;
            Ok(Target::Snapshot {
                origin_dev,
                cow_dev,
                tag: parse_tag(&tag)?,
                origin_id: id,
            })
        }
        other => err(format!(
            "unknown target command {other:?}: expected co or cs"
        )),
    }
}

/// A table line, `0 <sectors> dm-snap-mv <target args>`: what `dmsetup
/// create --table` takes and `dmsetup table` prints. It displays as it
/// parses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Table {
    /// Length in 512-byte sectors.
    pub sectors: u64,
    pub target: Target,
}

impl Table {
    /// Parse a table line (the start sector must be 0).
    pub fn parse(line: &str) -> Result<Table, ParseError> {
        let words = split_words(line)?;
        if words.len() < 3 {
            return err("a table is `<start> <sectors> dm-snap-mv <args>`");
        }
        let start: u64 = words[0]
            .parse()
            .map_err(|_| ParseError(format!("invalid start sector {:?}", words[0])))?;
        if start != 0 {
            return err("the start sector must be 0");
        }
        let sectors: u64 = words[1]
            .parse()
            .map_err(|_| ParseError(format!("invalid sector count {:?}", words[1])))?;
        if words[2] != "dm-snap-mv" {
            return err(format!(
                "unknown target type {:?}: expected dm-snap-mv",
                words[2]
            ));
        }
        Ok(Table {
            sectors,
            target: parse_target(&words[3..])?,
        })
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0 {} dm-snap-mv {}", self.sectors, self.target)
    }
}

/// Parse message arguments.
pub fn parse_message(args: &[String]) -> Result<Message, ParseError> {
    let args = expand(args);
    let Some(cmd) = args.first() else {
        return err("empty message: expected so, ss, do, ds or rs");
    };
    let mut pos = Vec::new();
    let (mut memo, mut background) = (None, false);
    let mut i = 1;
    while i < args.len() {
        match args[i].as_str() {
            "-m" => memo = Some(value(&args, &mut i, "-m")?),
            "-b" => background = true,
            s if s.starts_with('-') && s.len() > 1 && s.parse::<i64>().is_err() => {
                return err(format!("unknown option {s}"))
            }
            s => pos.push(s.to_string()),
        }
        i += 1;
    }
    let one_tag = |pos: &[String], what: &str| -> Result<u32, ParseError> {
        match pos {
            [t] => parse_tag(t),
            _ => err(format!("{what} takes exactly one <tag>")),
        }
    };
    let none = |pos: &[String], what: &str| {
        if pos.is_empty() {
            Ok(())
        } else {
            err(format!("{what} takes no arguments"))
        }
    };
    let msg = match cmd.as_str() {
        "so" => {
            none(&pos, "so")?;
            Message::SnapshotOrigin {
                memo: memo.take().unwrap_or_default(),
            }
        }
        "ss" => Message::SnapshotOf {
            tag: one_tag(&pos, "ss")?,
            memo: memo.take().unwrap_or_default(),
        },
        "do" => {
            none(&pos, "do")?;
            Message::DeleteOrigin
        }
        "ds" => Message::DeleteSnapshot {
            tag: one_tag(&pos, "ds")?,
        },
        "rs" => Message::Rollback {
            tag: one_tag(&pos, "rs")?,
            background,
        },
        other => {
            return err(format!(
                "unknown message {other:?}: expected so, ss, do, ds or rs"
            ))
        }
    };
    if memo.is_some() {
        return err(format!("-m is not an option of {cmd}"));
    }
    if background && !matches!(msg, Message::Rollback { .. }) {
        return err(format!("-b is not an option of {cmd}"));
    }
    Ok(msg)
}

/// Split a line into words, honouring single and double quotes.
pub fn split_words(line: &str) -> Result<Vec<String>, ParseError> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    for c in line.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => cur.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                in_word = true;
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            (None, c) => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if quote.is_some() {
        return err("unterminated quote");
    }
    if in_word {
        out.push(cur);
    }
    Ok(out)
}

/// Quote a word for a table line if it needs it.
pub fn quote(s: &str) -> String {
    if !s.is_empty()
        && !s
            .chars()
            .any(|c| c.is_whitespace() || c == '"' || c == '\'')
    {
        s.to_string()
    } else {
        // Single quotes keep everything but themselves; a single quote is
        // written as `'"'"'` (close, a double-quoted one, reopen), which
        // `split_words` joins back into the one word.
        format!("'{}'", s.replace('\'', "'\"'\"'"))
    }
}

/// The same target with other device paths (e.g. made absolute).
pub fn with_devices(t: &Target, origin: &str, cow: &str) -> Target {
    let mut t = t.clone();
    match &mut t {
        Target::Origin {
            origin_dev,
            cow_dev,
            ..
        }
        | Target::Snapshot {
            origin_dev,
            cow_dev,
            ..
        } => {
            *origin_dev = origin.to_string();
            *cow_dev = cow.to_string();
        }
    }
    t
}

/// A target prints back as target arguments (what `dmsetup table` shows
/// after the length), quoted so that it parses to the same target.
impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Target::Origin {
                origin_dev,
                cow_dev,
                origin_id,
                bind,
                format,
                chunk_pages,
            } => {
                let mut s = format!("co {} {}", quote(origin_dev), quote(cow_dev));
                if let Some(id) = origin_id {
                    s.push_str(&format!(" -i {}", quote(id)));
                }
                if *bind {
                    s.push_str(" -b");
                }
                match format {
                    Some(Format::Force) => s.push_str(" -F"),
                    Some(Format::IfEmpty) => s.push_str(" -f"),
                    None => {}
                }
                if let Some(c) = chunk_pages {
                    s.push_str(&format!(" -c {c}"));
                }
                s
            }
            Target::Snapshot {
                origin_dev,
                cow_dev,
                tag,
                origin_id,
            } => {
                let mut s = format!("cs {} {} {tag}", quote(origin_dev), quote(cow_dev));
                if let Some(id) = origin_id {
                    s.push_str(&format!(" -i {}", quote(id)));
                }
                s
            }
        };
        f.write_str(&s)
    }
}

#[cfg(test)]
mod tests;
