//! Real Redis deployments for tests, on free loopback ports: a Redis Cluster of three
//! primaries with one replica each (`redis-cli --cluster create`), and a primary with a replica
//! watched by one Sentinel. Everything is killed when dropped.

use std::process::Command;
use std::time::{Duration, Instant};

use super::redis_server::RedisServer;

/// How long a cluster or a failover gets to settle.
pub const SETTLE: Duration = Duration::from_secs(30);

/// `redis-cli` with `args`; its stdout, or the failure.
pub fn cli(args: &[&str]) -> Result<String, String> {
    let o = Command::new("redis-cli")
        .args(args)
        .output()
        .map_err(|e| format!("redis-cli: {e}"))?;
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    if o.status.success() {
        Ok(out)
    } else {
        Err(format!("{out}{}", String::from_utf8_lossy(&o.stderr)))
    }
}

fn wait(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + SETTLE;
    while !ok() {
        assert!(Instant::now() < deadline, "{what} within {SETTLE:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `name:value` of an INFO answer.
fn field(info: &str, name: &str) -> Option<String> {
    info.lines().find_map(|l| {
        l.trim()
            .strip_prefix(&format!("{name}:"))
            .map(str::to_string)
    })
}

/// Waits until the replica on `replica` holds as many keys as its primary on `primary`.
fn streaming(primary: &str, replica: &str) {
    let size = |p: &str| {
        cli(&["-p", p, "dbsize"])
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
    };
    wait("the replica streaming its primary's writes", || {
        let want = size(primary).unwrap_or(0);
        want > 0 && size(replica) == Some(want)
    });
}

/// Three primaries and three replicas.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts six cluster-enabled servers (node timeout 1 s, so a failover takes seconds),
    /// joins them with `redis-cli --cluster create --cluster-replicas 1`, and waits until every
    /// node reports `cluster_state:ok`.
    pub fn start() -> RedisCluster {
        let args: Vec<String> = [
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "{dir}/nodes-{port}.conf",
            "--cluster-node-timeout",
            "1000",
            "--cluster-port",
            "{free}",
            // Replicas sync at once (the default waits 5 s for more replicas to join).
            "--repl-diskless-sync-delay",
            "0",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let nodes: Vec<RedisServer> = (0..6)
            .map(|_| RedisServer::start_with(args.clone(), false, |_| {}))
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        let mut create = vec!["--cluster", "create"];
        create.extend(addrs.iter().map(String::as_str));
        create.extend(["--cluster-replicas", "1", "--cluster-yes"]);
        cli(&create).unwrap_or_else(|e| panic!("redis-cli --cluster create failed: {e}"));
        let c = RedisCluster { nodes };
        c.wait_ok();
        // A replica that does not stream yet could not take over (after a diskless sync the
        // primary streams only from the replica's first ACK, up to a second later): write keys
        // that land on every primary and wait until each replica holds as many as its primary.
        let any = c.nodes[0].port().to_string();
        for i in 0..30 {
            cli(&["-c", "-p", &any, "set", &format!("probe-{i}"), "1"]).unwrap();
        }
        for n in &c.nodes {
            let port = n.port().to_string();
            let info = cli(&["-p", &port, "info", "replication"]).unwrap();
            if let Some(primary) = field(&info, "master_port") {
                streaming(&primary, &port);
            }
        }
        c
    }

    /// Seed URLs: every node.
    pub fn seeds(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.url()).collect()
    }

    /// Waits until every running node reports `cluster_state:ok` and sees three primaries.
    pub fn wait_ok(&self) {
        for n in &self.nodes {
            if !n.is_running() {
                continue;
            }
            let port = n.port().to_string();
            let deadline = Instant::now() + SETTLE;
            while !cli(&["-p", &port, "cluster", "info"])
                .is_ok_and(|i| i.contains("cluster_state:ok"))
            {
                if Instant::now() > deadline {
                    let nodes = cli(&["-p", &port, "cluster", "nodes"]).unwrap_or_else(|e| e);
                    let log = std::fs::read_dir(n.dir())
                        .into_iter()
                        .flatten()
                        .flatten()
                        .filter(|e| e.file_name().to_string_lossy().ends_with(".log"))
                        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
                        .collect::<String>();
                    panic!("node {port}: no cluster_state:ok within {SETTLE:?}:\n{nodes}\n{log}");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// The node (index) that is the primary for `key`'s slot.
    pub fn primary_of(&self, key: &str) -> usize {
        let live = self
            .nodes
            .iter()
            .find(|n| n.is_running())
            .expect("a live node");
        let port = live.port().to_string();
        let slot: u16 = cli(&["-p", &port, "cluster", "keyslot", key])
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let nodes = cli(&["-p", &port, "cluster", "nodes"]).unwrap();
        for line in nodes.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 9 || !f[2].contains("master") || f[2].contains("fail") {
                continue;
            }
            for range in &f[8..] {
                let (lo, hi) = range.split_once('-').unwrap_or((range, range));
                if let (Ok(lo), Ok(hi)) = (lo.parse::<u16>(), hi.parse::<u16>())
                    && (lo..=hi).contains(&slot)
                {
                    let port: u16 = f[1].split(['@', ':']).nth(1).unwrap().parse().unwrap();
                    return self.nodes.iter().position(|n| n.port() == port).unwrap();
                }
            }
        }
        panic!("no primary for slot {slot}:\n{nodes}");
    }
}

/// A primary, its replica, and one Sentinel watching them as `mymaster` (down after 1 s).
pub struct SentinelSetup {
    pub primary: RedisServer,
    pub replica: RedisServer,
    pub sentinel: RedisServer,
}

impl SentinelSetup {
    pub fn start() -> SentinelSetup {
        let primary = RedisServer::start_with(
            vec!["--repl-diskless-sync-delay".into(), "0".into()],
            false,
            |_| {},
        );
        let replica = RedisServer::start_with(
            vec![
                "--replicaof".into(),
                "127.0.0.1".into(),
                primary.port().to_string(),
            ],
            false,
            |_| {},
        );
        let p = primary.port();
        let conf = format!(
            "sentinel monitor mymaster 127.0.0.1 {p} 1\n\
             sentinel down-after-milliseconds mymaster 1000\n\
             sentinel failover-timeout mymaster 5000\n\
             sentinel parallel-syncs mymaster 1\n"
        );
        let sentinel = RedisServer::start_with(
            vec!["{dir}/sentinel.conf".into(), "--sentinel".into()],
            false,
            move |d| std::fs::write(d.join("sentinel.conf"), &conf).unwrap(),
        );
        let s = SentinelSetup {
            primary,
            replica,
            sentinel,
        };
        let port = s.replica.port().to_string();
        let primary = s.primary.port().to_string();
        cli(&["-p", &primary, "set", "probe", "1"]).unwrap();
        streaming(&primary, &port);
        let sp = s.sentinel.port().to_string();
        wait("Sentinel to see the replica", || {
            cli(&["-p", &sp, "sentinel", "replicas", "mymaster"]).is_ok_and(|r| r.contains(&port))
        });
        s
    }

    /// The port Sentinel names as the primary.
    pub fn primary_port(&self) -> u16 {
        let sp = self.sentinel.port().to_string();
        let out = cli(&["-p", &sp, "sentinel", "get-master-addr-by-name", "mymaster"]).unwrap();
        out.lines().nth(1).unwrap().trim().parse().unwrap()
    }
}
