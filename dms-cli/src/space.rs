//! `dms du` and `dms prune`: what snapshots cost and taking the old ones
//! away by a rule.

use crate::proto::{Request, Response};
use crate::Exit;

/// `dms du`.
#[derive(clap::Args)]
pub struct DuCmd {
    /// Any dm_dev of the origin.
    dm_dev: String,
    /// The same data as JSON.
    #[arg(long)]
    json: bool,
}

impl DuCmd {
    pub fn run(self) -> Result<Response, Exit> {
        let mut r = crate::send(&Request::Du { name: self.dm_dev })?;
        if self.json && r.code == 0 {
            let data = r.data.take().unwrap_or_default();
            r.output = serde_json::to_string_pretty(&data).unwrap_or_default() + "\n";
        }
        Ok(r)
    }
}

/// `dms grow`.
#[derive(clap::Args)]
pub struct GrowCmd {
    /// Any dm_dev of the store.
    dm_dev: String,
}

impl GrowCmd {
    pub fn run(self) -> Result<Response, Exit> {
        crate::send(&Request::Grow { name: self.dm_dev })
    }
}

/// `dms policy`.
#[derive(clap::Args)]
pub struct PolicyCmd {
    /// Any dm_dev of the store.
    dm_dev: String,
    /// Percent of the COW device in use at which the store is low
    /// (`cow-status : low`, a warning, the hook); 0: none.
    #[arg(long, value_name = "PCT", value_parser = clap::value_parser!(u8).range(0..=100))]
    low_water: Option<u8>,
    /// A shell command run once each time the mark is crossed, with
    /// DMS_DM_DEV, DMS_DM_DEVS, DMS_COW_DEVICE, DMS_USED_CHUNKS,
    /// DMS_TOTAL_CHUNKS, DMS_USED_PERCENT, DMS_LOW_WATER in its environment
    /// ("" for none).
    #[arg(long, value_name = "CMD")]
    hook: Option<String>,
    /// What a write to an origin or one of its snapshots does when it needs
    /// a COW chunk and none is left: fail (ENOSPC), or delete that origin's
    /// oldest snapshots until it fits (never an exposed one, never one of
    /// the newest --keep-min, never one whose deletion frees nothing).
    #[arg(long, value_name = "RULE", value_parser = ["fail", "delete-oldest"])]
    on_full: Option<String>,
    /// Under --on-full delete-oldest: the newest N snapshots of an origin
    /// are never deleted.
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    keep_min: Option<u32>,
    #[arg(long)]
    json: bool,
}

impl PolicyCmd {
    pub fn run(self) -> Result<Response, Exit> {
        let mut r = crate::send(&Request::Policy {
            name: self.dm_dev,
            low_water: self.low_water,
            hook: self.hook,
            on_full: self.on_full,
            keep_min: self.keep_min,
        })?;
        if self.json && r.code == 0 {
            let data = r.data.take().unwrap_or_default();
            r.output = serde_json::to_string_pretty(&data).unwrap_or_default() + "\n";
        }
        Ok(r)
    }
}

/// `dms prune`.
#[derive(clap::Args)]
pub struct PruneCmd {
    /// Any dm_dev of the origin.
    dm_dev: String,
    /// Keep the N newest snapshots.
    #[arg(long, value_name = "N")]
    keep_last: u32,
    /// Also keep every snapshot younger than this (e.g. 90m, 36h, 7d, 2w).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    keep_within: Option<u64>,
    /// List what would be deleted; delete nothing.
    #[arg(long)]
    dry_run: bool,
}

/// A duration with a unit: s, m, h, d or w.
pub fn parse_duration(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let mul = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => {
            return Err(format!(
                "{s:?}: give a number and a unit (s, m, h, d, w), e.g. 7d"
            ))
        }
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mul))
        .ok_or_else(|| format!("{s:?} is not a duration (e.g. 7d)"))
}

/// Which tags a rule deletes: (delete, kept because exposed). `snaps` are
/// (tag, birthday, dm_dev).
pub fn choose(
    snaps: &[(u32, u64, Option<String>)],
    keep_last: u32,
    keep_within: Option<u64>,
    now: u64,
) -> (Vec<u32>, Vec<(u32, String)>) {
    let mut by_age: Vec<&(u32, u64, Option<String>)> = snaps.iter().collect();
    // Newest first; the same second: the larger tag is newer.
    by_age.sort_by_key(|s| std::cmp::Reverse((s.1, s.0)));
    let (mut delete, mut exposed) = (Vec::new(), Vec::new());
    for (i, (tag, birthday, dm)) in by_age.into_iter().enumerate() {
        let recent = keep_within.is_some_and(|w| now.saturating_sub(*birthday) < w);
        if i < keep_last as usize || recent {
            continue;
        }
        match dm {
            Some(d) => exposed.push((*tag, d.clone())),
            None => delete.push(*tag),
        }
    }
    delete.sort_unstable();
    exposed.sort_unstable();
    (delete, exposed)
}

impl PruneCmd {
    pub fn run(self) -> Result<Response, Exit> {
        let r = crate::send(&Request::List {
            name: Some(self.dm_dev.clone()),
        })?;
        if r.code != 0 {
            return Ok(r);
        }
        let data = r.data.unwrap_or_default();
        let snaps: Vec<(u32, u64, Option<String>)> = data["origins"][0]["snapshots"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|s| s["tag"].as_u64().is_some_and(|t| t != 0))
                    .map(|s| {
                        (
                            s["tag"].as_u64().unwrap_or(0) as u32,
                            s["birthday"].as_u64().unwrap_or(0),
                            s["dm_dev"].as_str().map(str::to_string),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let (delete, exposed) = choose(&snaps, self.keep_last, self.keep_within, now);
        let mut out = String::new();
        for (t, d) in &exposed {
            out.push_str(&format!("kept {t}: exposed as dm_dev {d}\n"));
        }
        let mut deleted = Vec::new();
        for t in &delete {
            if self.dry_run {
                out.push_str(&format!("would delete {t}\n"));
                continue;
            }
            let r = crate::send(&Request::Message {
                name: self.dm_dev.clone(),
                args: vec!["ds".into(), t.to_string()],
            })?;
            if r.code != 0 {
                let mut r = r;
                r.output = out;
                r.error = Some(format!(
                    "deleting {t}: {} (deleted before it: {deleted:?})",
                    r.error.unwrap_or_default()
                ));
                return Ok(r);
            }
            out.push_str(&format!("deleted {t}\n"));
            deleted.push(*t);
        }
        Ok(Response {
            output: out,
            data: Some(serde_json::json!({
                "deleted": deleted, "would_delete": if self.dry_run { delete.clone() } else { Vec::new() },
                "kept_exposed": exposed.iter().map(|(t, d)| serde_json::json!({"tag": t, "dm_dev": d})).collect::<Vec<_>>(),
            })),
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90m"), Ok(5400));
        assert_eq!(parse_duration("7d"), Ok(604_800));
        assert!(parse_duration("7").is_err());
        assert!(parse_duration("d").is_err());
        assert!(parse_duration("99999999999999999999w").is_err());
    }

    #[test]
    fn the_rule_keeps_the_newest_the_recent_and_the_exposed() {
        let s = |t: u32, b: u64, d: Option<&str>| (t, b, d.map(str::to_string));
        let snaps = vec![
            s(1, 100, None),
            s(2, 200, Some("snap2")),
            s(3, 300, None),
            s(4, 400, None),
            s(5, 500, None),
        ];
        assert_eq!(
            choose(&snaps, 2, None, 1000),
            (vec![1, 3], vec![(2, "snap2".into())])
        );
        assert_eq!(
            choose(&snaps, 1, Some(750), 1000),
            (vec![1], vec![(2, "snap2".into())])
        );
        assert_eq!(choose(&snaps, 10, None, 1000), (vec![], vec![]));
        assert_eq!(choose(&snaps, 0, None, 1000).0, vec![1, 3, 4, 5]);
    }
}
