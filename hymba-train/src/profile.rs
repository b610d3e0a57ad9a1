//! Host-side CPU profile of a run: `hymba-train --cpu-profile FILE` in a build with the
//! `cpu-profile` feature samples every thread of the process ~1,000 times per CPU-second
//! (SIGPROF, `pprof`) and writes the stacks in the folded format of flame-graph tools
//! (`thread;outermost;…;innermost count` per line) when the run ends.
//!
//! Why: on a GPU, hymba-125m steps are bound by the host, not the device (a CUDA activity
//! trace shows the GPU busy for about a third of each step), so the question is where the
//! host's time goes — burn's fusion and autodiff bookkeeping, cubecl's launch path, our own
//! ordering of the cuBLAS products. Symbols come from the binary's symbol table: do not
//! strip a binary that is to be profiled (`strip --strip-debug` keeps the names).
//!
//! CPU time alone cannot show a thread that waits: burn's fusion server and cubecl's device
//! server hand work to each other through queues and blocking calls. With
//! `--cpu-profile-wall SECS` a helper thread, from SECS seconds after the start (past
//! compilation and autotuning), sends SIGPROF to the main thread and to the device-service
//! threads (`DS…`) every millisecond of wall time, so a blocked thread is
//! sampled where it waits (the handler is installed with SA_RESTART; parked threads wake,
//! find nothing to do and park again). The interval timer then runs at 1 Hz, so the samples
//! are wall-clock samples per thread.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// A running profile; writes its file when dropped.
pub struct CpuProfile {
    guard: pprof::ProfilerGuard<'static>,
    path: PathBuf,
    /// Ends the wall-clock sampler thread, if any.
    stop: Arc<AtomicBool>,
}

impl CpuProfile {
    /// Starts sampling, to be written to `path` when dropped: CPU time, or with
    /// `wall = Some(delay)` wall-clock time from `delay` seconds on (see the module docs).
    /// `None`, with a warning on stderr, if the profiler cannot start.
    pub fn start(path: PathBuf, wall: Option<f64>) -> Option<Self> {
        let wall = wall.filter(|d| d.is_finite() && *d >= 0.0);
        match pprof::ProfilerGuardBuilder::default()
            .frequency(if wall.is_some() { 1 } else { 997 })
            .blocklist(&["libc", "libgcc", "pthread", "vdso"])
            .build()
        {
            Ok(guard) => {
                let stop = Arc::new(AtomicBool::new(false));
                if let Some(delay) = wall {
                    spawn_wall_sampler(Duration::from_secs_f64(delay), stop.clone());
                }
                Some(Self { guard, path, stop })
            }
            Err(e) => {
                eprintln!("warning: --cpu-profile: the profiler did not start: {e}");
                None
            }
        }
    }

    fn write(&self) -> Result<usize, Box<dyn std::error::Error>> {
        let report = self.guard.report().build()?;
        let mut out = BufWriter::new(File::create(&self.path)?);
        for (frames, count) in &report.data {
            write!(
                out,
                "{}",
                frames.thread_name_or_id().replace([';', ' '], "_")
            )?;
            // pprof lists the innermost frame first; folded stacks go outermost first.
            for symbols in frames.frames.iter().rev() {
                for symbol in symbols.iter().rev() {
                    write!(out, ";{}", symbol.name().replace([';', ' '], "_"))?;
                }
            }
            writeln!(out, " {count}")?;
        }
        out.flush()?;
        Ok(report.data.len())
    }
}

/// From `delay` on and until `stop` is set, sends SIGPROF every millisecond to the main
/// thread and to every thread whose name starts with `DS` (burn's fusion server `DSU-…`,
/// cubecl's device server `DSD-…`). The thread list is read again every second, so that
/// servers started after the delay are sampled too.
fn spawn_wall_sampler(delay: Duration, stop: Arc<AtomicBool>) {
    let spawned = std::thread::Builder::new()
        .name("profile-wall".into())
        .spawn(move || {
            std::thread::sleep(delay);
            // SAFETY: a plain syscall without arguments.
            let pid = unsafe { libc::getpid() };
            let mut targets = Vec::new();
            for tick in 0u64.. {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                if tick % 1000 == 0 {
                    targets = sampled_threads(pid);
                }
                for &tid in &targets {
                    // SAFETY: tgkill with the signal whose handler pprof installed (it ignores
                    // the signal once the profiler stops).
                    unsafe {
                        libc::syscall(libc::SYS_tgkill, pid, tid, libc::SIGPROF);
                    }
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        });
    if let Err(e) = spawned {
        eprintln!("warning: --cpu-profile-wall: no sampler thread: {e}");
    }
}

/// The ids of the process's main thread and of its threads named `DS…`.
fn sampled_threads(pid: i32) -> Vec<i32> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|task| {
            let tid = task.file_name().to_str()?.parse::<i32>().ok()?;
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            (tid == pid || comm.starts_with("DS")).then_some(tid)
        })
        .collect()
}

impl Drop for CpuProfile {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        match self.write() {
            Ok(n) => eprintln!("cpu profile: {n} stacks written to {}", self.path.display()),
            Err(e) => eprintln!("warning: --cpu-profile: {}: {e}", self.path.display()),
        }
    }
}
