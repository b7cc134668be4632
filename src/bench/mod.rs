//! `stroom bench`: measured figures for the node's DP evaluation, the federation's fan-out and the
//! accuracy of national estimates. Each prints a table and writes JSON; BENCHMARKS.md records them.

pub mod accuracy;
pub mod federation;
pub mod node;

use anyhow::{Context, Result};
use serde::Serialize;
use std::path::Path;

/// What the figures were measured on, written into every JSON report.
#[derive(Debug, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub memory_gib: f64,
    pub cpu_model: String,
    pub build: &'static str,
}

impl Machine {
    pub fn read() -> Machine {
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let kib = proc_field(&meminfo, "MemTotal:").unwrap_or(0.0);
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        Machine {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_gib: kib / 1024.0 / 1024.0,
            cpu_model,
            build: if cfg!(debug_assertions) {
                "debug (figures are not representative: use a release build)"
            } else {
                "release"
            },
        }
    }
}

/// Say so on stderr when the figures come from a debug build: they are several times slower.
pub fn warn_if_debug() {
    if cfg!(debug_assertions) {
        eprintln!(
            "note: this is a debug build; for figures worth recording use `cargo build --release` and target/release/stroom"
        );
    }
}

fn proc_field(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
}

/// This process's peak resident memory (VmHWM) in MiB.
pub fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    proc_field(&status, "VmHWM:").map_or(f64::NAN, |kib| kib / 1024.0)
}

/// Another process's CPU time (user + system, /proc/PID/stat) in seconds and peak resident memory
/// (VmHWM) in MiB: the helper's, measured from the benchmark.
pub fn process_cpu_and_peak(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // SAFETY: sysconf reads a constant of the running system.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let tick = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let cpu = (tick(11) + tick(12)) / ticks;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let peak = proc_field(&status, "VmHWM:").map_or(f64::NAN, |kib| kib / 1024.0);
    (cpu, peak)
}

/// This process's resident memory now (VmRSS) in MiB.
pub fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    proc_field(&status, "VmRSS:").map_or(f64::NAN, |kib| kib / 1024.0)
}

/// Reset the peak (VmHWM) to the current resident size, so the next reading is the peak of the
/// work in between (Linux ≥ 4.0: writing 5 to clear_refs).
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// CPU time (user + system) this process and its ended threads have used, in seconds
/// (getrusage: microsecond resolution).
pub fn cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes the struct it is given, which is zeroed and ours.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return 0.0;
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Synthetic providers (and the panel) written off the async runtime, with the time it took.
pub async fn synthesize(opts: crate::synth::SynthOptions) -> Result<crate::synth::Manifest> {
    let started = std::time::Instant::now();
    let manifest =
        tokio::task::spawn_blocking(move || crate::synth::generate(&opts, |_| {})).await??;
    eprintln!("  synthesized in {:.1}s", started.elapsed().as_secs_f64());
    Ok(manifest)
}

/// Print a benchmark's table under its title and write its JSON report.
pub fn print_and_write<T: Serialize>(
    title: &str,
    header: &[&str],
    rows: &[Vec<String>],
    out: &Path,
    report: &T,
) -> Result<()> {
    print_table(title, header, rows);
    write_json(out, report)
}

/// Print a table under its title.
pub fn print_table(title: &str, header: &[&str], rows: &[Vec<String>]) {
    println!("\n{title}");
    print!("{}", table(header, rows));
}

/// Write a report as pretty JSON and say where.
pub fn write_json<T: Serialize>(path: &Path, report: &T) -> Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let text = serde_json::to_string_pretty(report)?;
    std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

/// A Markdown table: a header row and rows of cells, columns padded for reading in a terminal.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        format!("| {} |\n", padded.join(" | "))
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    out.push_str(&line(widths.iter().map(|w| "-".repeat(*w)).collect()));
    for row in rows {
        out.push_str(&line(row.clone()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_grows_with_work() {
        let before = cpu_seconds();
        let mut x = 0u64;
        let t = std::time::Instant::now();
        while t.elapsed().as_millis() < 300 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        let used = cpu_seconds() - before;
        assert!(
            used >= 0.1,
            "300 ms of busy work counted as {used} s of CPU"
        );
    }

    #[test]
    fn peak_rss_reset_forgets_an_earlier_peak() {
        let big = vec![1u8; 200 << 20];
        std::hint::black_box(&big);
        let high = peak_rss_mib();
        drop(big);
        reset_peak_rss();
        let after = peak_rss_mib();
        assert!(
            high - after > 100.0,
            "peak {high} MiB, after reset {after} MiB"
        );
    }

    #[test]
    fn table_lines_up_columns() {
        let t = table(&["a", "bb"], &[vec!["xyz".into(), "1".into()]]);
        assert_eq!(t, "| a   | bb |\n| --- | -- |\n| xyz | 1  |\n");
    }

    #[test]
    fn median_of_odd_and_empty() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert!(median(vec![]).is_nan());
    }
}
