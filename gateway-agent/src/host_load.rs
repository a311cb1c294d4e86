//! The load of the machine the agent runs on, as placement wants it: CPUs,
//! the one-minute load average and the memory still available (Linux
//! `/proc`); nothing where those cannot be read.

use continuum_proto::v1::HostLoad;

/// The host's load now, or none off Linux.
pub fn measure() -> Option<HostLoad> {
    let loadavg = std::fs::read_to_string("/proc/loadavg").ok()?;
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    parse(&loadavg, &meminfo, cpus)
}

fn parse(loadavg: &str, meminfo: &str, cpus: usize) -> Option<HostLoad> {
    let load1: f64 = loadavg.split_whitespace().next()?.parse().ok()?;
    let available_kib: u64 = meminfo.lines().find_map(|l| {
        let rest = l.strip_prefix("MemAvailable:")?;
        rest.split_whitespace().next()?.parse().ok()
    })?;
    Some(HostLoad {
        cpus: u32::try_from(cpus).unwrap_or(u32::MAX),
        load1,
        memory_available_bytes: available_kib.saturating_mul(1024),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_proc() {
        let l = parse(
            "0.52 0.40 0.30 2/345 6789\n",
            "MemTotal:       24000000 kB\nMemFree:  100 kB\nMemAvailable:   12000000 kB\n",
            2,
        )
        .unwrap();
        assert_eq!(l.cpus, 2);
        assert!((l.load1 - 0.52).abs() < 1e-9);
        assert_eq!(l.memory_available_bytes, 12_000_000 * 1024);
        assert_eq!(parse("", "MemAvailable: 1 kB", 1), None);
        assert_eq!(parse("1.0", "MemFree: 1 kB", 1), None);
        // This machine's own figures read.
        assert!(measure().is_some());
    }
}
