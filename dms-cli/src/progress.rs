//! A progress line on stderr while a foreground rollback runs.

use crate::client;
use crate::proto::Request;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub struct Progress {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl Progress {
    pub fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.thread.join();
    }
}

/// Poll `dms list <dm_dev>` and draw the rollback's progress.
pub fn spawn(dm_dev: String) -> Progress {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let thread = std::thread::spawn(move || {
        let mut drawn = false;
        while !flag.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(250));
            let Ok(r) = client::call(
                &Request::List {
                    name: Some(dm_dev.clone()),
                },
                false,
            ) else {
                continue;
            };
            let rb = r
                .data
                .as_ref()
                .and_then(|d| d["origins"][0]["rollbacking"].as_object().cloned());
            if let Some(rb) = rb {
                let done = rb.get("done_chunks").and_then(|v| v.as_u64()).unwrap_or(0);
                let total = rb
                    .get("total_chunks")
                    .and_then(|v| v.as_u64())
                    .unwrap_or(0)
                    .max(1);
                let pct = done * 100 / total;
                let bar: String = (0..40)
                    .map(|i| if i * 100 < pct * 40 { '#' } else { '.' })
                    .collect();
                eprint!("\rrollback [{bar}] {pct:>3}% ({done}/{total} chunks)");
                let _ = std::io::stderr().flush();
                drawn = true;
            }
        }
        if drawn {
            let bar: String = "#".repeat(40);
            eprintln!("\rrollback [{bar}] 100% (done)                    ");
        }
    });
    Progress { stop, thread }
}
