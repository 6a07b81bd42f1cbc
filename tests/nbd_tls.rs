//! NBD over TLS with a test CA made here (openssl): nbdinfo and nbdcopy
//! through `nbds://`, plain clients refused under `--tls require`, a wrong
//! CA, client certificates with `--tls-verify-peer`, and clients sending
//! garbage during and after the handshake while others carry on.

mod common;

use common::*;
use std::process::{Child, Command, Stdio};

const MIB: u64 = 1 << 20;

/// A CA, a server certificate for localhost and 127.0.0.1, a client
/// certificate, and another CA: `server/` (as the daemon takes it),
/// `client/` (ca-cert.pem, client-cert.pem, client-key.pem, as libnbd
/// takes it), `anon/` (the CA only) and `wrong/` (another CA).
fn pki(env: &Env) -> std::path::PathBuf {
    let dir = env.path("pki");
    let script = r#"
set -e
mkdir -p server client anon wrong
openssl req -x509 -newkey rsa:2048 -nodes -keyout ca-key.pem -out ca-cert.pem -days 2 -subj "/CN=dms test CA"
openssl req -newkey rsa:2048 -nodes -keyout server/server-key.pem -out server.csr -subj "/CN=localhost"
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' > san.cnf
openssl x509 -req -in server.csr -CA ca-cert.pem -CAkey ca-key.pem -CAcreateserial -out server/server-cert.pem -days 2 -extfile san.cnf
openssl req -newkey rsa:2048 -nodes -keyout client/client-key.pem -out client.csr -subj "/CN=backup client"
printf 'extendedKeyUsage=clientAuth\n' > client.cnf
openssl x509 -req -in client.csr -CA ca-cert.pem -CAkey ca-key.pem -CAcreateserial -out client/client-cert.pem -days 2 -extfile client.cnf
cp ca-cert.pem server/ && cp ca-cert.pem client/ && cp ca-cert.pem anon/
openssl req -x509 -newkey rsa:2048 -nodes -keyout wrong/k.pem -out wrong/ca-cert.pem -days 2 -subj "/CN=another CA"
"#;
    std::fs::create_dir_all(&dir).unwrap();
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir
}

fn daemon(env: &Env, args: &[&str]) -> Child {
    let child = Command::new(bin())
        .arg("daemon")
        .args(args)
        .env("DMS_RUN_DIR", env.run.path())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let sock = env.run.path().join("control.sock");
    for _ in 0..200 {
        if sock.exists() && std::os::unix::net::UnixStream::connect(&sock).is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    child
}

fn stop(env: &Env, mut d: Child) {
    env.ok(&["shutdown", "--force"]);
    let _ = d.wait();
}

fn nbdinfo(args: &[&str]) -> (bool, String) {
    let out = Command::new("nbdinfo").args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// A Python client: the NBD greeting, STARTTLS, then `then` (Python code
/// with `s` the raw socket and `t` the TLS socket, or None when the
/// handshake failed). Prints what happened.
fn python_client(port: u16, cafile: &std::path::Path, then: &str) -> String {
    let code = python_code(port, cafile, then);
    let out = Command::new("python3")
        .arg("-c")
        .arg(code)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn python_code(port: u16, cafile: &std::path::Path, then: &str) -> String {
    format!(
        r#"
import socket, ssl, struct, sys
s = socket.create_connection(("127.0.0.1", {port}), timeout=5)
s.recv(18)
s.sendall(struct.pack(">I", 3))
s.sendall(struct.pack(">QII", 0x49484156454F5054, 5, 0))
r = s.recv(20)
assert struct.unpack(">QIII", r)[2] == 1, r
ctx = ssl.create_default_context(cafile="{ca}")
t = None
{then}
"#,
        ca = cafile.display()
    )
}

#[test]
fn nbd_over_tls() {
    if !require_tools(
        "nbd_over_tls",
        &["nbdinfo", "nbdcopy", "openssl", "python3"],
    ) {
        return;
    }
    let env = Env::new();
    let pki = pki(&env);
    let port = 21000 + (std::process::id() % 20000) as u16;
    let listen = format!("127.0.0.1:{port}");
    let certs = pki.join("server").display().to_string();
    // Bad flags: one line, no daemon.
    let out = Command::new(bin())
        .args(["daemon", "--tls", "require"])
        .env("DMS_RUN_DIR", env.run.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--tls-certificates"));
    let d = daemon(
        &env,
        &[
            "--nbd-listen",
            &listen,
            "--tls",
            "require",
            "--tls-certificates",
            &certs,
        ],
    );
    let origin = env.image("o.img", 16 * MIB);
    let cow = env.image("c.img", 64 * MIB);
    env.ok(&["create", "orig", &origin, &cow, "-bf"]);
    let data: Vec<u8> = (0..4 * MIB as usize).map(|i| (i * 7 % 251) as u8).collect();
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(env.mapper("orig"))
            .unwrap();
        f.write_all_at(&data, 0).unwrap();
        f.sync_all().unwrap();
    }
    let tls_uri = |dir: &str| {
        format!(
            "nbds://localhost:{port}/orig?tls-certificates={}",
            pki.join(dir).display()
        )
    };
    let (ok, out) = nbdinfo(&[&tls_uri("anon")]);
    assert!(ok && out.contains("with TLS"), "{out}");
    let (ok, out) = nbdinfo(&["--map", &tls_uri("anon")]);
    assert!(ok && out.contains("hole,zero"), "{out}");
    // Over the unix socket too.
    let unix = format!(
        "nbds+unix:///orig?socket={}&tls-certificates={}",
        env.run.path().join("nbd.sock").display(),
        pki.join("anon").display()
    );
    assert!(nbdinfo(&[&unix]).0);
    // A held TLS connection (it waits, then reads) survives all that follows.
    let held = Command::new("python3")
        .arg("-c")
        .arg(python_code(
            port,
            &pki.join("ca-cert.pem"),
            r#"
t = ctx.wrap_socket(s, server_hostname="localhost")
name = b"orig"
t.sendall(struct.pack(">QII", 0x49484156454F5054, 7, 4 + len(name) + 2) + struct.pack(">I", len(name)) + name + b"\0\0")
def take(n):
    b = b""
    while len(b) < n:
        c = t.recv(n - len(b))
        if not c:
            sys.exit("the server closed the connection")
        b += c
    return b
while True:
    h = take(20)
    kind, n = struct.unpack(">II", h[12:20])
    body = take(n)
    if kind != 3:
        assert kind == 1, kind
        break
import time
time.sleep(3)
t.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 0, 5, 0, 4096))
r = take(16 + 4096)
assert struct.unpack(">I", r[4:8])[0] == 0
assert r[16:] == bytes([(i * 7 % 251) for i in range(4096)])
print("held ok")
"#,
        ))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // nbdcopy both ways.
    let copy = env.path("copy.img");
    let st = Command::new("nbdcopy")
        .arg(tls_uri("anon"))
        .arg(&copy)
        .status()
        .unwrap();
    assert!(st.success());
    assert!(std::fs::read(&copy).unwrap() == std::fs::read(env.mapper("orig")).unwrap());
    // Plain clients are refused; a wrong CA fails.
    let (ok, _) = nbdinfo(&[&format!("nbd://127.0.0.1:{port}/orig")]);
    assert!(!ok, "a plain client under --tls require");
    let (ok, out) = nbdinfo(&[&tls_uri("wrong")]);
    assert!(!ok, "{out}");
    // Garbage during the handshake, and after it: disconnected.
    let out = python_client(
        port,
        &pki.join("ca-cert.pem"),
        r#"
s.sendall(b"\x16\x03\x01\x00\x05" + b"\xff" * 300)
try:
    rest = s.recv(100)
    while rest and s.recv(100):
        pass
    print("closed")
except Exception as e:
    print("closed", e)
"#,
    );
    assert!(out.contains("closed"), "{out}");
    let out = python_client(
        port,
        &pki.join("ca-cert.pem"),
        r#"
t = ctx.wrap_socket(s, server_hostname="localhost")
t.sendall(b"NOT AN OPTION AT ALL" * 3)
try:
    print("got", t.recv(100), "closed")
except Exception as e:
    print("closed", e)
"#,
    );
    assert!(out.contains("closed"), "{out}");
    let out = python_client(
        port,
        &pki.join("ca-cert.pem"),
        r#"
raw = s.dup()
t = ctx.wrap_socket(s, server_hostname="localhost")
raw.sendall(b"\x17\x03\x03\x00\x10" + b"\x00" * 16)  # a forged record on the raw socket
try:
    print("got", t.recv(100), "closed")
except Exception as e:
    print("closed", e)
"#,
    );
    assert!(out.contains("closed"), "{out}");
    // Everyone else carried on.
    assert!(nbdinfo(&[&tls_uri("anon")]).0);
    let out = held.wait_with_output().unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("held ok"),
        "the held TLS connection"
    );
    stop(&env, d);

    // --tls on: plain and TLS clients both.
    let d = daemon(
        &env,
        &[
            "--nbd-listen",
            &listen,
            "--tls",
            "on",
            "--tls-certificates",
            &certs,
        ],
    );
    assert!(nbdinfo(&[&format!("nbd://127.0.0.1:{port}/orig")]).0);
    assert!(nbdinfo(&[&tls_uri("anon")]).0);
    stop(&env, d);

    // --tls-verify-peer: only clients with a certificate from the CA.
    let d = daemon(
        &env,
        &[
            "--nbd-listen",
            &listen,
            "--tls",
            "require",
            "--tls-certificates",
            &certs,
            "--tls-verify-peer",
        ],
    );
    let (ok, out) = nbdinfo(&[&tls_uri("client")]);
    assert!(ok, "{out}");
    let (ok, _) = nbdinfo(&[&tls_uri("anon")]);
    assert!(!ok, "a client without a certificate");
    stop(&env, d);
}
