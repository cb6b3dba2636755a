//! What the peer runs share: ports, processes, certificates and figures.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// 512-byte payload whose first 8 bytes are the send time in nanoseconds
/// since `epoch` (sender and receiver share the process, so one clock).
pub fn payload(epoch: Instant) -> Vec<u8> {
    let mut p = vec![b'x'; 512];
    p[..8].copy_from_slice(&(epoch.elapsed().as_nanos() as u64).to_le_bytes());
    p
}

/// The latency of a payload made by [`payload`].
pub fn latency_of(epoch: Instant, p: &[u8]) -> Option<Duration> {
    let sent = u64::from_le_bytes(p.get(..8)?.try_into().ok()?);
    Some(Duration::from_nanos(
        (epoch.elapsed().as_nanos() as u64).saturating_sub(sent),
    ))
}

/// A free loopback port (the peers take a port in their config, not 0).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A peer server process, killed when dropped.
pub struct Proc(Child);

impl Proc {
    /// The process ID.
    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Starts `bin args…`, logging to `log`.
    pub fn start(bin: &str, args: &[&str], log: &Path) -> Proc {
        let out = std::fs::File::create(log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = Command::new(bin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("{bin}: {e} (run tests/bench.sh, which installs it)"));
        Proc(child)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Writes `dir/NAME.conf`, starts `bin -c` on it (log: `dir/NAME.log`)
/// and waits until it listens on `port`.
pub fn serve(bin: &str, dir: &Path, name: &str, conf: &str, port: u16) -> Proc {
    let path = dir.join(format!("{name}.conf"));
    std::fs::write(&path, conf).expect("peer config");
    let p = Proc::start(
        bin,
        &["-c", &path.display().to_string()],
        &dir.join(format!("{name}.log")),
    );
    wait_port(port, &format!("{bin} ({name})"));
    p
}

/// The fixed offered load of the latency runs: a tick every 5 ms (ticks
/// missed under load are caught up in a burst) and the messages per tick.
pub fn ticker(rate: usize) -> (tokio::time::Interval, usize) {
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    (tick, rate / 200)
}

/// Waits until something listens on `port`.
fn wait_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not listen on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// CA, server certificate (localhost, 127.0.0.1) and client certificate
/// for a peer's TLS link, issued by rsnet-certs.
pub struct PeerTls {
    pub ca: PathBuf,
    pub server: (PathBuf, PathBuf),
    pub client: (PathBuf, PathBuf),
}

pub fn peer_tls(dir: &Path) -> PeerTls {
    use rsnet_certs::Pki;
    use rsnet_common::tls::Role;
    let pki = Pki::init(&dir.join("pki"), None).expect("pki");
    let s = pki
        .issue("peer.core", Role::Appserver, &[], &[])
        .expect("server cert");
    let c = pki
        .issue("peer.edge", Role::Mlm, &[], &[])
        .expect("client cert");
    PeerTls {
        ca: pki.ca(),
        server: (s.cert, s.key),
        client: (c.cert, c.key),
    }
}

/// CPU seconds (user + system) process `pid` has used so far (0 once it is gone).
pub fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the line (11 and 12 after
    // ')'), in clock ticks: 100 a second on Linux (USER_HZ).
    (ticks(11) + ticks(12)) / 100.0
}

/// A proxy certificate for `id` from the tree's PKI, as a client TLS config
/// (the simulated children of the idle and fan-in runs).
pub fn child_tls(tree: &rsnet_demo::Tree, id: &str) -> rustls::ClientConfig {
    let f = tree
        .pki
        .issue(id, rsnet_common::tls::Role::Proxy, &[], &[])
        .expect("cert");
    rsnet_common::tls::client_config(&rsnet_common::tls::TlsPaths {
        ca: tree.pki.ca(),
        cert: f.cert,
        key: f.key,
        crl: None,
    })
    .expect("tls")
}

/// The CPU a system's server processes spend over a stretch of a run.
pub struct CpuMeter {
    pids: Vec<u32>,
    start: f64,
}

impl CpuMeter {
    /// Starts counting for `pids` now.
    pub fn start(pids: Vec<u32>) -> CpuMeter {
        let start = pids.iter().map(|p| cpu_secs(*p)).sum();
        CpuMeter { pids, start }
    }

    /// CPU seconds spent since [`CpuMeter::start`], all processes together.
    pub fn secs(&self) -> f64 {
        self.pids.iter().map(|p| cpu_secs(*p)).sum::<f64>() - self.start
    }

    /// Microseconds of CPU per message for `messages` handled since the start.
    pub fn us_per(&self, messages: f64) -> f64 {
        self.secs() * 1e6 / messages.max(1.0)
    }
}

/// One system's figures.
pub struct Figures {
    pub name: &'static str,
    pub throughput: f64,
    /// Server CPU (all the system's processes) per stored message in the throughput run, µs.
    pub cpu_us: f64,
    pub p50: Duration,
    pub p99: Duration,
    pub p999: Duration,
    pub samples: usize,
    pub offered: usize,
}

/// p-th quantile of sorted samples.
pub fn quantile(sorted: &[Duration], p: f64) -> Duration {
    sorted
        .get(((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1)))
        .copied()
        .unwrap_or_default()
}
