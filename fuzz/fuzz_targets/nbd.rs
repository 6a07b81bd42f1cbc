//! The NBD server's handshake and transmission phases fed any bytes as a
//! client: options (structured replies, metadata contexts with any
//! queries, INFO and GO, STARTTLS with TLS off), then requests (reads,
//! writes, block status in every context, with any flags, offsets and
//! lengths). Never a panic or a hang; what the server writes back is
//! thrown away. The exports are an origin and a snapshot of a small store.
#![no_main]

#[allow(dead_code)]
#[path = "../../dms-cli/src/daemon/nbd/mod.rs"]
mod nbd;

use dms_engine::io::MemDev;
use dms_engine::{FormatOptions, Store};
use libfuzzer_sys::fuzz_target;
use std::io::{Cursor, Read, Write};
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::{Arc, Mutex, OnceLock};

/// A client: reads come from the input, writes go nowhere.
struct Client(Arc<Mutex<Cursor<Vec<u8>>>>);

impl Read for Client {
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().read(b)
    }
}

impl Write for Client {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl nbd::Conn for Client {
    fn try_clone_conn(&self) -> std::io::Result<Box<dyn nbd::Conn>> {
        Ok(Box::new(Client(self.0.clone())))
    }
    fn shutdown_both(&self) {
        let mut c = self.0.lock().unwrap();
        let end = c.get_ref().len() as u64;
        c.set_position(end);
    }
}

struct Exports(Vec<(String, nbd::Export)>);

impl nbd::Exports for Exports {
    fn get(&self, name: &str) -> Option<nbd::Export> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, e)| e.clone())
    }
    fn names(&self) -> Vec<String> {
        self.0.iter().map(|(n, _)| n.clone()).collect()
    }
}

fn exports() -> Arc<dyn nbd::Exports> {
    static EXPORTS: OnceLock<Arc<Exports>> = OnceLock::new();
    EXPORTS
        .get_or_init(|| {
            let store = Store::format(
                Arc::new(MemDev::new("cow", 4 << 20)),
                &FormatOptions::default(),
            )
            .unwrap();
            store
                .bind("o", Arc::new(MemDev::new("origin", 256 * 1024)))
                .unwrap();
            let o = store.volume("o", 0).unwrap();
            o.write_at(&[7; 8192], 4096).unwrap();
            let t = store.snapshot_origin("o", "").unwrap();
            o.write_at(&[8; 4096], 65536).unwrap();
            let export = |tag: u32, read_only: bool| nbd::Export {
                volume: Arc::new(store.volume("o", tag).unwrap()),
                read_only,
                clients: Arc::new(AtomicUsize::new(0)),
                alive: Arc::new(AtomicBool::new(true)),
            };
            Arc::new(Exports(vec![
                ("orig".into(), export(0, false)),
                ("s1".into(), export(t, true)),
            ]))
        })
        .clone()
}

fuzz_target!(|data: &[u8]| {
    let client = Client(Arc::new(Mutex::new(Cursor::new(data.to_vec()))));
    nbd::handle_conn(Box::new(client), exports(), None);
});
