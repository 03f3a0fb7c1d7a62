//! The process's resident memory as Linux reports it: the peak so far (`VmHWM` of
//! `/proc/self/status`) and resetting that peak (`/proc/self/clear_refs`), for benchmarks that
//! say what a stage holds.

/// Peak resident memory of this process since start or the last [`reset_peak`], in MiB (`None`
/// where `/proc` does not say).
pub fn peak_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb = s.lines().find(|l| l.starts_with("VmHWM:"))?.split_whitespace().nth(1)?.parse::<f64>().ok()?;
    Some(kb / 1024.0)
}

/// Resets the peak [`peak_mib`] reports to the current resident memory (best effort).
pub fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

#[cfg(test)]
mod tests {
    /// After a reset the peak is the current resident memory; touching 64 MiB raises it by that.
    #[test]
    fn the_peak_counts_what_the_process_touched() {
        super::reset_peak();
        let Some(before) = super::peak_mib() else { return eprintln!("skipped: no /proc/self/status") };
        let big = vec![1u8; 64 << 20];
        std::hint::black_box(&big);
        let after = super::peak_mib().unwrap();
        assert!(after >= before + 60.0, "peak {before} MiB, then {after} MiB after touching 64 MiB");
    }
}
