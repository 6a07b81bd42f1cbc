//! The table lines `dms create` and `dms dmsetup create` send: flags
//! checked, devices made absolute, the length filled in.

use crate::{paths, quote, Exit};

/// The table line of `dms create`: an origin's dm_dev, or with `tag` a
/// snapshot's; `flags` are -b, -f, -F, -c and -i.
pub(crate) fn create_table(
    origin_dev: &str,
    cow_dev: &str,
    tag: Option<u32>,
    flags: (bool, bool, bool, Option<u32>, Option<String>),
) -> Result<String, Exit> {
    let (bind, format, force, chunk, id) = flags;
    if tag.is_some() && (bind || format || force || chunk.is_some()) {
        return Err(Exit(2, "-b, -f, -F and -c apply to an origin's dm_dev, not to a snapshot's (drop the tag or the flags)".into()));
    }
    if !bind && (format || force) {
        return Err(Exit(
            2,
            "-f and -F format the COW device only together with -b".into(),
        ));
    }
    let mut args = match tag {
        Some(t) => vec![
            "cs".to_string(),
            quote(origin_dev),
            quote(cow_dev),
            t.to_string(),
        ],
        None => vec!["co".to_string(), quote(origin_dev), quote(cow_dev)],
    };
    if let Some(id) = id {
        args.push("-i".into());
        args.push(quote(&id));
    }
    if bind {
        args.push("-b".into());
    }
    if format {
        args.push("-f".into());
    }
    if force {
        args.push("-F".into());
    }
    if let Some(c) = chunk {
        args.push("-c".into());
        args.push(c.to_string());
    }
    let words =
        dms_engine::table::split_words(&args.join(" ")).map_err(|e| Exit(2, e.to_string()))?;
    let target = dms_engine::table::parse_target(&words).map_err(|e| Exit(2, e.to_string()))?;
    absolute_table(None, &target)
}

/// A table line with absolute device paths (the daemon has its own working
/// directory) and, unless given, the origin's size in sectors.
pub(crate) fn absolute_table(
    sectors: Option<u64>,
    target: &dms_engine::table::Target,
) -> Result<String, Exit> {
    let origin = paths::device(target.origin_dev()).map_err(|e| Exit(1, e))?;
    let cow = paths::device(target.cow_dev()).map_err(|e| Exit(1, e))?;
    let sectors = match sectors {
        Some(s) => s,
        None => paths::device_size(&origin).map_err(|e| Exit(1, e))? / 512,
    };
    let t = dms_engine::table::with_devices(
        target,
        &origin.display().to_string(),
        &cow.display().to_string(),
    );
    Ok(dms_engine::table::Table { sectors, target: t }.to_string())
}
