//! What the benchmarks share: running one on a two-thread runtime and writing its report to
//! `target/bench/<name>.txt`, and reading a process's figures from `/proc`.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// Runs `bench` on a two-thread runtime, prints its report and writes it to
/// `target/bench/<name>.txt`; a failure or an unwritable file is a non-zero exit with the reason.
pub fn run_and_write(name: &str, bench: impl Future<Output = Result<String, String>>) -> ExitCode {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    match runtime.block_on(bench) {
        Ok(report) => {
            print!("{report}");
            let path = target_dir().join("bench").join(format!("{name}.txt"));
            let written = std::fs::create_dir_all(path.parent().expect("a parent"))
                .and_then(|()| std::fs::write(&path, &report));
            match written {
                Ok(()) => {
                    println!("written to {}", path.display());
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("{name} bench: cannot write {}: {error}", path.display());
                    ExitCode::FAILURE
                }
            }
        }
        Err(error) => {
            eprintln!("{name} bench failed: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Where cargo puts its output: `CARGO_TARGET_DIR`, else the workspace's `target/`.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let server = Path::new(env!("CARGO_MANIFEST_DIR"));
            server.parent().unwrap_or(server).join("target")
        })
}

/// A memory figure of `/proc/<pid>/status` (`VmRSS:`, `VmHWM:`) in MiB; 0 when it cannot be read.
pub fn memory_mib(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.trim().strip_suffix("kB"))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

pub fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

pub fn median(values: &mut [Duration]) -> Duration {
    values.sort();
    values[values.len() / 2]
}
