//! TLS for NBD (`NBD_OPT_STARTTLS`) through rustls, configured as nbdkit
//! is: a directory with `server-cert.pem`, `server-key.pem` and, to verify
//! clients' certificates, `ca-cert.pem`. After the handshake the
//! connection is bridged to a socket pair, so that the NBD code reads and
//! writes plain bytes from its reader and worker threads as before: one
//! thread decrypts what comes from the network, one encrypts what goes.

use super::Conn;
use anyhow::{bail, Context};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, ServerConnection};
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// `--tls`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Mode {
    /// No TLS (STARTTLS is refused).
    #[default]
    Off,
    /// TLS for clients that ask (STARTTLS); plain ones are served too.
    On,
    /// Only TLS: every option before STARTTLS is refused (TLS_REQD).
    Require,
}

pub struct Server {
    config: Arc<ServerConfig>,
    mode: Mode,
}

impl Server {
    /// Load the certificates in `dir`; with `verify_peer`, clients must
    /// present a certificate signed by `ca-cert.pem`.
    pub fn load(dir: &Path, mode: Mode, verify_peer: bool) -> anyhow::Result<Server> {
        if mode == Mode::Off {
            bail!("--tls off takes no certificates");
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cert_path = dir.join("server-cert.pem");
        let key_path = dir.join("server-key.pem");
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
            .with_context(|| format!("reading {}", cert_path.display()))?
            .collect::<Result<_, _>>()
            .with_context(|| format!("parsing {}", cert_path.display()))?;
        if certs.is_empty() {
            bail!("{} holds no certificate", cert_path.display());
        }
        let key = PrivateKeyDer::from_pem_file(&key_path)
            .with_context(|| format!("reading the private key in {}", key_path.display()))?;
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?;
        let builder = if verify_peer {
            let ca_path = dir.join("ca-cert.pem");
            let mut roots = RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(&ca_path)
                .with_context(|| format!("reading {}", ca_path.display()))?
            {
                roots
                    .add(c.with_context(|| format!("parsing {}", ca_path.display()))?)
                    .with_context(|| format!("a CA certificate in {}", ca_path.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .context("the client certificate verifier")?;
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let config = builder
            .with_single_cert(certs, key)
            .context("the server certificate and key do not go together")?;
        Ok(Server {
            config: Arc::new(config),
            mode,
        })
    }

    pub fn required(&self) -> bool {
        self.mode == Mode::Require
    }

    /// The TLS handshake over `net`, then a connection of plain bytes.
    pub fn accept(&self, mut net: Box<dyn Conn>) -> io::Result<Box<dyn Conn>> {
        let mut tls = ServerConnection::new(self.config.clone()).map_err(io::Error::other)?;
        while tls.is_handshaking() {
            if let Err(e) = tls.complete_io(&mut net) {
                // Tell the client why, if it can still hear it.
                let _ = tls.write_tls(&mut *net);
                return Err(e);
            }
        }
        // Replies of up to 32 MiB go through whole: the plain side bounds
        // what is buffered.
        tls.set_buffer_limit(None);
        let (inner, mut outer) = UnixStream::pair()?;
        // What came with the end of the handshake (the client's first
        // options may have) is plain text already; and what the server
        // still has to send (session tickets) goes now.
        let state = tls
            .process_new_packets()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        let k = state.plaintext_bytes_to_read();
        if k > 0 {
            let mut early = vec![0u8; k];
            tls.reader().read_exact(&mut early)?;
            outer.write_all(&early)?;
        }
        while tls.wants_write() {
            tls.write_tls(&mut net)?;
        }
        net.flush()?;
        let tls = Arc::new(Mutex::new(tls));
        let net_w = net.try_clone_conn()?;
        let net_w = Arc::new(Mutex::new(net_w));
        // Network to plain.
        {
            let (tls, net_w) = (tls.clone(), net_w.clone());
            let mut outer = outer.try_clone()?;
            std::thread::spawn(move || {
                let r = decrypt(&mut *net, &tls, &net_w, &mut outer);
                if let Err(e) = r {
                    tracing::debug!("nbd tls: {e}");
                }
                let _ = outer.shutdown(std::net::Shutdown::Both);
                net.shutdown_both();
            });
        }
        // Plain to network.
        {
            let mut outer = outer;
            std::thread::spawn(move || {
                let r = encrypt(&mut outer, &tls, &net_w);
                if let Err(e) = r {
                    tracing::debug!("nbd tls: {e}");
                }
                let _ = outer.shutdown(std::net::Shutdown::Both);
                lock(&net_w).shutdown_both();
            });
        }
        Ok(Box::new(inner))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Write what TLS has to send (handshake messages, alerts, records).
fn flush_tls(tls: &mut ServerConnection, net: &Mutex<Box<dyn Conn>>) -> io::Result<()> {
    let mut w = lock(net);
    while tls.wants_write() {
        tls.write_tls(&mut **w)?;
    }
    w.flush()
}

fn decrypt(
    net: &mut dyn Conn,
    tls: &Mutex<ServerConnection>,
    net_w: &Mutex<Box<dyn Conn>>,
    plain: &mut UnixStream,
) -> io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut out = Vec::new();
    loop {
        let n = net.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        let mut rd = &buf[..n];
        out.clear();
        let closed = {
            let mut t = lock(tls);
            let mut closed = false;
            while !rd.is_empty() {
                t.read_tls(&mut rd)?;
                let state = match t.process_new_packets() {
                    Ok(s) => s,
                    Err(e) => {
                        // A bad record: send the alert and stop.
                        let _ = flush_tls(&mut t, net_w);
                        return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                    }
                };
                let k = state.plaintext_bytes_to_read();
                if k > 0 {
                    let at = out.len();
                    out.resize(at + k, 0);
                    t.reader().read_exact(&mut out[at..])?;
                }
                closed |= state.peer_has_closed();
            }
            flush_tls(&mut t, net_w)?;
            closed
        };
        plain.write_all(&out)?;
        if closed {
            return Ok(());
        }
    }
}

fn encrypt(
    plain: &mut UnixStream,
    tls: &Mutex<ServerConnection>,
    net_w: &Mutex<Box<dyn Conn>>,
) -> io::Result<()> {
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = plain.read(&mut buf)?;
        let mut t = lock(tls);
        if n == 0 {
            t.send_close_notify();
            return flush_tls(&mut t, net_w);
        }
        t.writer().write_all(&buf[..n])?;
        flush_tls(&mut t, net_w)?;
    }
}
