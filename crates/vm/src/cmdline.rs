//! The kernel command line Kiln boots with: console and panic behaviour, timer settings that
//! avoid hangs under TCG, then the recipe's own arguments (which come last and so win).

use crate::accel::Accel;

/// Arguments every Kiln guest gets. `cryptomgr.notests` skips the crypto self-tests and
/// `8250.nr_uarts=1` the probing of three serial ports nobody uses: both measurable under TCG
/// (BENCHMARKS.md).
pub const BASE: &str = "console=ttyS0 panic=-1 quiet cryptomgr.notests 8250.nr_uarts=1";

/// What a tiny kernel takes, as its image's manifest records it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TinyKernel {
    /// `CONFIG_HZ`, when known.
    pub hz: Option<u32>,
    /// It takes `lapic_timer_period=` (Kiln's `x86-lapic-timer-period` patch).
    pub lapic_timer_period: bool,
    /// It honours `page_reporting.page_reporting_order=` (Kiln's
    /// `page-reporting-order-param` patch).
    pub page_reporting_order: bool,
}

/// Arguments for Kiln's tiny kernel (`kiln_kernel::tiny`), put before the recipe's.
///
/// - `reboot=t`: there is no ACPI to power off with, so kiln-init reboots and the triple fault
///   ends QEMU, which runs with `-no-reboot`.
/// - `no_timer_check`: skips checking that the PIT interrupt reaches the IO-APIC, a busy wait
///   for four jiffies (40 ms at `HZ=100`, under KVM too).
/// - `lapic_timer_period=` (`1000000000 / hz`: QEMU's and KVM's APIC bus runs at 1 GHz) when
///   the kernel takes it and `CONFIG_HZ` is known: the local APIC timer runs uncalibrated, and an idle guest is tickless.
///   Otherwise, under TCG, `noapictimer`: skips calibrating the APIC timer against the PIT
///   (about 0.25 s); the PIT drives the clock instead, with a tick every ~27 ms when idle.
/// - Under TCG, `noreplace-smp`: keeps the `lock` prefixes a one-vCPU guest would otherwise
///   rewrite one `text_poke` at a time (about 40 ms under TCG; the prefixes cost nothing there).
/// - Under TCG, `lpj=` (`tsc_khz * 1000 / hz`) when the host's TSC rate and the kernel's
///   `CONFIG_HZ` are known: the delay loop is the TSC, so this is exact, and each extra vCPU
///   skips calibrating its delay loop (about 0.3 s each).
/// - [`PAGE_REPORTING_ORDER_ARG`] when the kernel honours it.
pub fn tiny_kernel_args(accel: Accel, tsc_khz: Option<u64>, kernel: TinyKernel) -> String {
    let hz = kernel.hz.filter(|h| *h > 0);
    let mut s = String::from("reboot=t no_timer_check");
    if kernel.page_reporting_order {
        s.push(' ');
        s.push_str(PAGE_REPORTING_ORDER_ARG);
    }
    match hz {
        Some(hz) if kernel.lapic_timer_period => {
            s.push_str(&format!(" lapic_timer_period={}", 1_000_000_000 / hz));
        }
        _ if accel == Accel::Tcg => s.push_str(" noapictimer"),
        _ => {}
    }
    if accel != Accel::Tcg {
        return s;
    }
    s.push_str(" noreplace-smp");
    if let (Some(khz), Some(hz)) = (tsc_khz, hz) {
        s.push_str(&format!(" lpj={}", khz * 1000 / u64::from(hz)));
    }
    s
}

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

/// Free page reporting in 32 KiB blocks (order 3) instead of 2 MiB ones: a guest of a few MiB
/// has its free memory in small blocks, and the reporting watermark is 32 blocks above the low
/// watermark (64 MiB at 2 MiB). For a kernel that honours it (Kiln's tiny kernel).
pub const PAGE_REPORTING_ORDER_ARG: &str = "page_reporting.page_reporting_order=3";

/// Whether `word` is an argument derived from the host's TSC rate (`tsc_early_khz=`, `lpj=`):
/// it follows the host, not the guest, so it is left out of what identifies a VM's setup.
pub fn is_host_clock_arg(word: &str) -> bool {
    word.starts_with("tsc_early_khz=") || word.starts_with("lpj=")
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

    fn hz(hz: u32) -> TinyKernel {
        TinyKernel {
            hz: Some(hz),
            ..TinyKernel::default()
        }
    }

    fn lapic(hz: Option<u32>) -> TinyKernel {
        TinyKernel {
            hz,
            lapic_timer_period: true,
            ..TinyKernel::default()
        }
    }

    #[test]
    fn a_kernel_that_honours_the_reporting_order_gets_it() {
        for accel in [Accel::Tcg, Accel::Kvm] {
            let k = TinyKernel {
                page_reporting_order: true,
                ..hz(100)
            };
            let a = tiny_kernel_args(accel, None, k);
            assert!(a.split(' ').any(|w| w == PAGE_REPORTING_ORDER_ARG), "{a}");
            assert!(!tiny_kernel_args(accel, None, hz(100)).contains("page_reporting"));
        }
    }

    #[test]
    fn tiny_kernel_skips_timer_checks_and_tcg_also_calibration() {
        let tcg = tiny_kernel_args(Accel::Tcg, Some(2_596_000), hz(100));
        let tcg: Vec<&str> = tcg.split(' ').collect();
        let kvm = tiny_kernel_args(Accel::Kvm, Some(2_596_000), hz(100));
        let kvm: Vec<&str> = kvm.split(' ').collect();
        for a in ["reboot=t", "no_timer_check"] {
            assert!(tcg.contains(&a) && kvm.contains(&a), "{a}");
        }
        for a in ["noapictimer", "noreplace-smp", "lpj=25960000"] {
            assert!(tcg.contains(&a) && !kvm.contains(&a), "{a}");
        }
        assert!(tiny_kernel_args(Accel::Tcg, Some(2_596_000), hz(250)).ends_with(" lpj=10384000"));
        for (khz, k) in [
            (None, hz(100)),
            (Some(2_596_000), TinyKernel::default()),
            (Some(1), hz(0)),
        ] {
            assert!(!tiny_kernel_args(Accel::Tcg, khz, k).contains("lpj="));
        }
    }

    #[test]
    fn a_kernel_that_takes_the_apic_timer_period_keeps_its_apic_timer() {
        for accel in [Accel::Tcg, Accel::Kvm] {
            let a = tiny_kernel_args(accel, Some(2_596_000), lapic(Some(100)));
            assert!(a.contains(" lapic_timer_period=10000000"), "{a}");
            assert!(!a.contains("noapictimer"), "{a}");
        }
        let a = tiny_kernel_args(Accel::Tcg, None, lapic(Some(250)));
        assert!(a.contains(" lapic_timer_period=4000000"), "{a}");
        // Without HZ there is no period to give: under TCG the PIT drives the clock.
        let a = tiny_kernel_args(Accel::Tcg, None, lapic(None));
        assert!(
            a.contains("noapictimer") && !a.contains("lapic_timer_period"),
            "{a}"
        );
    }

    #[test]
    fn parses_cpuinfo() {
        let info = "processor\t: 0\ncpu MHz\t\t: 2596.138\nflags\t\t: fpu tsc constant_tsc\n";
        assert_eq!(parse_tsc_khz(info), Some(2_596_000));
        assert_eq!(parse_tsc_khz("cpu MHz : 2596.1\nflags : fpu tsc\n"), None);
    }
}
