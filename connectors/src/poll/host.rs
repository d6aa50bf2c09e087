//! The host pollster: this machine's CPU, memory, disks and network from `/proc`, under
//! Ceilometer's meter names, with the host name as the resource.
//!
//! | meter | type | unit | from |
//! | --- | --- | --- | --- |
//! | `cpu` | cumulative | ns | `/proc/stat`: busy jiffies (all but idle and iowait) × 10⁹ / `USER_HZ` (100) |
//! | `vcpus` | gauge | vcpu | `/proc/stat` `cpuN` lines |
//! | `memory` | gauge | MB | `/proc/meminfo` `MemTotal` |
//! | `memory.usage` | gauge | MB | `MemTotal − MemAvailable` |
//! | `disk.read.bytes`, `disk.write.bytes` | cumulative | B | `/proc/diskstats` sectors × 512, whole disks |
//! | `disk.read.requests`, `disk.write.requests` | cumulative | request | `/proc/diskstats` |
//! | `network.incoming.bytes`, `network.outgoing.bytes` | cumulative | B | `/proc/net/dev`, all but `lo` |
//! | `network.incoming.packets`, `network.outgoing.packets` | cumulative | packet | `/proc/net/dev` |
//!
//! `resource_metadata` carries `host` and `cpu_number`, so Ceilometer's `cpu_util` expression
//! (`100.0 / (10**9 * (resource_metadata.cpu_number or 1))`) gives the host's CPU percentage.
//! A file that cannot be read (another OS, a sandbox) just leaves its meters out.

use std::io;
use std::time::{SystemTime, UNIX_EPOCH};

use meterflow_engine::time::format_iso_naive;
use meterflow_engine::wire::encode::uuid4;

/// Linux reports `/proc/stat` in `USER_HZ` ticks, 100 per second on every architecture.
const USER_HZ: u64 = 100;

/// Samples the host.
pub struct HostPollster {
    host: String,
}

/// One reading: (meter, type, unit, volume).
pub type Reading = (&'static str, &'static str, &'static str, u64);

impl HostPollster {
    /// A pollster named after the host.
    pub fn new() -> io::Result<HostPollster> {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .ok()
            .filter(|h| !h.is_empty())
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| "localhost".into());
        Ok(HostPollster { host })
    }

    /// Reads every meter now.
    pub fn readings(&self) -> Vec<Reading> {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let mut out = Vec::new();
        out.extend(cpu(&read("/proc/stat")));
        out.extend(memory(&read("/proc/meminfo")));
        let whole_disks: Vec<String> = std::fs::read_dir("/sys/block")
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        out.extend(disks(&read("/proc/diskstats"), &whole_disks));
        out.extend(network(&read("/proc/net/dev")));
        out
    }

    /// One `telemetry.polling` notification line (with its `\n`) holding every reading.
    pub fn poll_line(&self) -> io::Result<Vec<u8>> {
        // Stamp the readings right after taking them (the CPU counter is read first).
        let readings = self.readings();
        let micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|e| io::Error::other(format!("clock before 1970: {e}")))?
            .as_micros() as i64;
        let timestamp = format_iso_naive(micros);
        let cpus = readings.iter().find(|r| r.0 == "vcpus").map_or(1, |r| r.3);
        let samples: Vec<serde_json::Value> = readings
            .iter()
            .map(|(name, kind, unit, volume)| {
                serde_json::json!({
                    "counter_name": name, "counter_type": kind, "counter_unit": unit, "counter_volume": volume,
                    "user_id": null, "project_id": null, "resource_id": self.host, "timestamp": timestamp,
                    "resource_metadata": {"host": self.host, "cpu_number": cpus},
                    "source": "openstack", "message_id": uuid4(), "monotonic_time": null,
                })
            })
            .collect();
        let line = serde_json::json!({
            "event_type": "telemetry.polling", "priority": "SAMPLE", "publisher_id": "meterflow.polling",
            "message_id": uuid4(), "timestamp": timestamp.replacen('T', " ", 1),
            "payload": {"samples": samples},
        });
        let mut bytes = serde_json::to_vec(&line).map_err(io::Error::other)?;
        bytes.push(b'\n');
        Ok(bytes)
    }
}

/// `cpu` (busy time, ns) and `vcpus` from `/proc/stat`.
pub fn cpu(stat: &str) -> Vec<Reading> {
    let mut out = Vec::new();
    let mut vcpus = 0u64;
    for line in stat.lines() {
        let mut fields = line.split_whitespace();
        match fields.next() {
            Some("cpu") => {
                let ticks: Vec<u64> = fields.filter_map(|f| f.parse().ok()).collect();
                // user nice system idle iowait irq softirq steal (guest is inside user).
                let busy: u64 = ticks
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| !matches!(i, 3 | 4) && *i < 8)
                    .map(|(_, t)| t)
                    .sum();
                out.push(("cpu", "cumulative", "ns", busy * (1_000_000_000 / USER_HZ)));
            }
            Some(name)
                if name.starts_with("cpu") && name[3..].chars().all(|c| c.is_ascii_digit()) =>
            {
                vcpus += 1
            }
            _ => {}
        }
    }
    if vcpus > 0 {
        out.push(("vcpus", "gauge", "vcpu", vcpus));
    }
    out
}

/// `memory` and `memory.usage` (MB) from `/proc/meminfo`.
pub fn memory(meminfo: &str) -> Vec<Reading> {
    let kb = |key: &str| {
        meminfo.lines().find_map(|l| {
            let rest = l.strip_prefix(key)?.strip_prefix(':')?;
            rest.split_whitespace().next()?.parse::<u64>().ok()
        })
    };
    match (kb("MemTotal"), kb("MemAvailable")) {
        (Some(total), Some(available)) => vec![
            ("memory", "gauge", "MB", total / 1024),
            (
                "memory.usage",
                "gauge",
                "MB",
                total.saturating_sub(available) / 1024,
            ),
        ],
        _ => Vec::new(),
    }
}

/// Disk bytes and requests from `/proc/diskstats`, summed over whole disks (not partitions,
/// loop or RAM devices).
pub fn disks(diskstats: &str, whole_disks: &[String]) -> Vec<Reading> {
    let (mut rb, mut wb, mut rr, mut wr, mut any) = (0u64, 0u64, 0u64, 0u64, false);
    for line in diskstats.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 10 {
            continue;
        }
        let name = f[2];
        if !whole_disks.iter().any(|d| d == name)
            || ["loop", "ram", "zram"].iter().any(|p| name.starts_with(p))
        {
            continue;
        }
        let n = |i: usize| f[i].parse::<u64>().unwrap_or(0);
        rr += n(3);
        rb += n(5) * 512;
        wr += n(7);
        wb += n(9) * 512;
        any = true;
    }
    if !any {
        return Vec::new();
    }
    vec![
        ("disk.read.bytes", "cumulative", "B", rb),
        ("disk.write.bytes", "cumulative", "B", wb),
        ("disk.read.requests", "cumulative", "request", rr),
        ("disk.write.requests", "cumulative", "request", wr),
    ]
}

/// Network bytes and packets from `/proc/net/dev`, summed over every interface but `lo`.
pub fn network(dev: &str) -> Vec<Reading> {
    let (mut rxb, mut rxp, mut txb, mut txp, mut any) = (0u64, 0u64, 0u64, 0u64, false);
    for line in dev.lines() {
        let Some((name, rest)) = line.split_once(':') else {
            continue;
        };
        if name.trim() == "lo" {
            continue;
        }
        let f: Vec<u64> = rest
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        if f.len() < 10 {
            continue;
        }
        rxb += f[0];
        rxp += f[1];
        txb += f[8];
        txp += f[9];
        any = true;
    }
    if !any {
        return Vec::new();
    }
    vec![
        ("network.incoming.bytes", "cumulative", "B", rxb),
        ("network.outgoing.bytes", "cumulative", "B", txb),
        ("network.incoming.packets", "cumulative", "packet", rxp),
        ("network.outgoing.packets", "cumulative", "packet", txp),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_stat() {
        let stat = "cpu  100 5 50 1000 30 2 3 4 7 0\ncpu0 50 0 25 500 15 1 1 2 0 0\ncpu1 50 5 25 500 15 1 2 2 0 0\nintr 1 2\n";
        assert_eq!(
            cpu(stat),
            [
                (
                    "cpu",
                    "cumulative",
                    "ns",
                    (100 + 5 + 50 + 2 + 3 + 4) * 10_000_000
                ),
                ("vcpus", "gauge", "vcpu", 2)
            ]
        );
        assert!(cpu("").is_empty());
    }

    #[test]
    fn parses_meminfo() {
        let m = "MemTotal:       2048000 kB\nMemFree:  100 kB\nMemAvailable:   1024000 kB\n";
        assert_eq!(
            memory(m),
            [
                ("memory", "gauge", "MB", 2000),
                ("memory.usage", "gauge", "MB", 1000)
            ]
        );
        assert!(memory("MemTotal: 5 kB").is_empty());
    }

    #[test]
    fn parses_diskstats_whole_disks_only() {
        let d = "   8       0 sda 10 0 200 0 20 0 400 0 0 0 0\n   8       1 sda1 10 0 200 0 20 0 400 0 0 0 0\n   7 0 loop0 5 0 5 0 5 0 5 0 0 0 0\n";
        let whole = vec!["sda".to_owned(), "loop0".to_owned()];
        assert_eq!(
            disks(d, &whole),
            [
                ("disk.read.bytes", "cumulative", "B", 200 * 512),
                ("disk.write.bytes", "cumulative", "B", 400 * 512),
                ("disk.read.requests", "cumulative", "request", 10),
                ("disk.write.requests", "cumulative", "request", 20),
            ]
        );
        assert!(disks(d, &[]).is_empty());
    }

    #[test]
    fn parses_net_dev_without_loopback() {
        let d = "Inter-|   Receive\n face |bytes packets\n    lo: 100 1 0 0 0 0 0 0 100 1 0 0 0 0 0 0\n  eth0: 1000 10 0 0 0 0 0 0 500 5 0 0 0 0 0 0\n";
        assert_eq!(
            network(d),
            [
                ("network.incoming.bytes", "cumulative", "B", 1000),
                ("network.outgoing.bytes", "cumulative", "B", 500),
                ("network.incoming.packets", "cumulative", "packet", 10),
                ("network.outgoing.packets", "cumulative", "packet", 5),
            ]
        );
    }
}
