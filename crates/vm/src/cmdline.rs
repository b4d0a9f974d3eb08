//! The kernel command line Kiln boots with: console and panic behaviour, timer settings that
//! avoid hangs under TCG, then the recipe's own arguments (which come last and so win).

use crate::accel::Accel;

/// Arguments every Kiln guest gets. `cryptomgr.notests` skips the crypto self-tests and
/// `8250.nr_uarts=1` the probing of three serial ports nobody uses: both measurable under TCG
/// (BENCHMARKS.md).
pub const BASE: &str = "console=ttyS0 panic=-1 quiet cryptomgr.notests 8250.nr_uarts=1";

/// Compose the command line. `tsc_khz` is the host TSC frequency when known: under TCG the
/// guest TSC runs at the host's rate, and telling the kernel skips the PIT calibration that
/// was seen to hang about one boot in three on these machines.
pub fn compose(accel: Accel, tsc_khz: Option<u64>, verbose: bool, extra: &str) -> String {
    let mut parts: Vec<String> = BASE.split(' ').map(String::from).collect();
    if verbose {
        parts.retain(|p| p != "quiet");
    }
    if accel == Accel::Tcg {
        if let Some(khz) = tsc_khz {
            parts.push(format!("tsc_early_khz={khz}"));
        }
    }
    let extra = extra.trim();
    if !extra.is_empty() {
        parts.push(extra.to_string());
    }
    parts.join(" ")
}

/// The host TSC frequency in kHz, from /proc/cpuinfo's "cpu MHz" when the CPU has a constant
/// TSC (rounded to the MHz).
pub fn host_tsc_khz() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    parse_tsc_khz(&info)
}

fn parse_tsc_khz(cpuinfo: &str) -> Option<u64> {
    let flags = cpuinfo.lines().find(|l| l.starts_with("flags"))?;
    if !flags.split_whitespace().any(|f| f == "constant_tsc") {
        return None;
    }
    let mhz = cpuinfo
        .lines()
        .find(|l| l.starts_with("cpu MHz"))?
        .split(':')
        .nth(1)?
        .trim();
    let mhz: f64 = mhz.parse().ok()?;
    (mhz > 100.0).then(|| (mhz.round() as u64) * 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcg_gets_tsc_and_extra_comes_last() {
        let c = compose(Accel::Tcg, Some(2_596_000), false, " loglevel=7 ");
        assert_eq!(
            c,
            "console=ttyS0 panic=-1 quiet cryptomgr.notests 8250.nr_uarts=1 tsc_early_khz=2596000 loglevel=7"
        );
        assert_eq!(
            compose(Accel::Kvm, Some(1), true, ""),
            "console=ttyS0 panic=-1 cryptomgr.notests 8250.nr_uarts=1"
        );
    }

    #[test]
    fn parses_cpuinfo() {
        let info = "processor\t: 0\ncpu MHz\t\t: 2596.138\nflags\t\t: fpu tsc constant_tsc\n";
        assert_eq!(parse_tsc_khz(info), Some(2_596_000));
        assert_eq!(parse_tsc_khz("cpu MHz : 2596.1\nflags : fpu tsc\n"), None);
    }
}
