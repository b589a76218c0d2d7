//! A real `redis-server` for tests: started from PATH on a free port of 127.0.0.1, without
//! persistence, in its own temporary directory; killed when dropped. `kill`, `restart` (same
//! port), `pause` and `resume` let tests simulate outages.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a starting server gets to answer PING.
const READY_DEADLINE: Duration = Duration::from_secs(10);

/// A running (or deliberately stopped) redis-server.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    /// Arguments beyond the defaults (TLS, cluster, replication), kept for restarts.
    extra: Vec<String>,
    /// Whether the port is a TLS port (the plain port is off).
    tls: bool,
}

impl RedisServer {
    /// Starts a server on a free port and waits until it answers PING. Panics with a clear
    /// message when `redis-server` is not installed.
    pub fn start() -> RedisServer {
        Self::start_with(Vec::new(), false, |_| {})
    }

    /// Starts a server with `extra` arguments (placeholders: `{dir}` is the server's
    /// directory, `{port}` its port, `{free}` another free port), on a TLS-only port when `tls`. `files` writes what the
    /// arguments name (certificates) into the directory first.
    pub fn start_with(
        extra: Vec<String>,
        tls: bool,
        files: impl Fn(&std::path::Path),
    ) -> RedisServer {
        let dir = tempfile::tempdir().expect("temporary directory");
        files(dir.path());
        let mut last = String::new();
        // Picking a port (bind :0, close) races with other processes: retry on a bind failure.
        for _ in 0..5 {
            let port = free_port();
            match spawn(port, &dir, &extra, tls) {
                Ok(child) => {
                    return RedisServer {
                        child: Some(child),
                        port,
                        dir,
                        extra,
                        tls,
                    };
                }
                Err(e) => last = e,
            }
        }
        panic!("redis-server did not start: {last}");
    }

    /// A TLS-only server (`--port 0 --tls-port P`) with `server`'s certificate, trusting `ca`
    /// for client certificates (required when `mtls`), with `requirepass` when `password`.
    pub fn start_tls(
        ca: &crate::support::pki::Ca,
        server: &crate::support::pki::Leaf,
        mtls: bool,
        password: Option<&str>,
    ) -> RedisServer {
        let mut extra: Vec<String> = [
            "--tls-cert-file",
            "{dir}/server.pem",
            "--tls-key-file",
            "{dir}/server.key",
            "--tls-ca-cert-file",
            "{dir}/ca.pem",
            "--tls-auth-clients",
            if mtls { "yes" } else { "no" },
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if let Some(p) = password {
            extra.extend(["--requirepass".to_string(), p.to_string()]);
        }
        let (ca, cert, key) = (
            ca.pem.clone(),
            server.cert_pem.clone(),
            server.key_pem.clone(),
        );
        Self::start_with(extra, true, move |d| {
            std::fs::write(d.join("ca.pem"), &ca).unwrap();
            std::fs::write(d.join("server.pem"), &cert).unwrap();
            std::fs::write(d.join("server.key"), &key).unwrap();
        })
    }

    /// Whether the process runs (not killed).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The server's directory (its log, its certificates).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// `redis://127.0.0.1:PORT` (`rediss://` for a TLS server).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// The port (kept across [`RedisServer::restart`]).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server (SIGKILL: no goodbye to clients) and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server if it runs, then starts a fresh one (empty data) on the same port.
    pub fn restart(&mut self) {
        self.kill();
        let child = spawn(self.port, &self.dir, &self.extra, self.tls)
            .unwrap_or_else(|e| panic!("redis-server did not restart on port {}: {e}", self.port));
        self.child = Some(child);
    }

    /// Freezes the server (SIGSTOP): connections stay open, nothing answers.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Thaws a paused server (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("server running").id();
        let ok = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill {sig} {pid} failed");
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            // A stopped process still dies of SIGKILL.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// Starts redis-server on `port` and waits until it answers PING; an error when it exits first
/// (e.g. the port was taken) or does not answer in time.
fn spawn(port: u16, dir: &tempfile::TempDir, extra: &[String], tls: bool) -> Result<Child, String> {
    let log = dir.path().join(format!("redis-{port}.log"));
    let _ = std::fs::remove_file(&log);
    let ports: Vec<String> = if tls {
        vec![
            "--port".into(),
            "0".into(),
            "--tls-port".into(),
            port.to_string(),
        ]
    } else {
        vec!["--port".into(), port.to_string()]
    };
    let d = dir.path().display().to_string();
    let extra: Vec<String> = extra
        .iter()
        .map(|a| {
            let a = a.replace("{dir}", &d).replace("{port}", &port.to_string());
            // Another free port (the cluster bus: port + 10000 may be past 65535).
            if a == "{free}" {
                free_port().to_string()
            } else {
                a
            }
        })
        .collect();
    // A config file (Sentinel's) must be the first argument.
    let (file, extra): (Vec<String>, Vec<String>) = match extra.split_first() {
        Some((f, rest)) if !f.starts_with("--") => (vec![f.clone()], rest.to_vec()),
        _ => (Vec::new(), extra),
    };
    let mut child = match Command::new("redis-server")
        .args(&file)
        .args(&ports)
        .args(&extra)
        .args(["--bind", "127.0.0.1"])
        .args(["--save", ""])
        .args(["--appendonly", "no"])
        .args(["--daemonize", "no"])
        .arg("--dir")
        .arg(dir.path())
        .arg("--logfile")
        .arg(&log)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "redis-server is not installed (not on PATH): run scripts/test.sh, which installs it"
        ),
        Err(e) => panic!("cannot run redis-server: {e}"),
    };
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + READY_DEADLINE;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            return Err(format!("exited with {status} on port {port}:\n{log}"));
        }
        let ready = if tls {
            // No plain port to PING: the log says when it listens.
            std::fs::read_to_string(&log).is_ok_and(|l| l.contains("Ready to accept connections"))
        } else {
            ping(addr)
        };
        if ready {
            return Ok(child);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            return Err(format!(
                "no PONG on port {port} within {READY_DEADLINE:?}:\n{log}"
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// One PING over a fresh connection; true on `+PONG`.
fn ping(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}
