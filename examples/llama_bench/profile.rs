//! `--host-profile DIR`: where the host spends a decode step.
//!
//! The decode steps are host-bound (every launch costs host time in Burn and CubeCL before the
//! GPU sees it), and the GPU machine has no `perf`: this samples the process from inside
//! (pprof-rs, SIGPROF at [`FREQUENCY`] Hz) over the measured decode steps and writes a flame
//! graph plus the functions with the most samples, self and inclusive. Built only with the
//! `host-profile` feature.

use std::path::{Path, PathBuf};

/// Samples per second of CPU time.
pub const FREQUENCY: i32 = 4000;

/// Where profiles go, and which configuration the next one belongs to.
#[derive(Debug, Clone)]
pub struct HostProfile {
    dir: PathBuf,
}

impl HostProfile {
    /// Profiles into `dir`, or explains that this binary cannot.
    pub fn new(dir: &Path) -> Result<Self, String> {
        if !cfg!(feature = "host-profile") {
            return Err(
                "--host-profile needs a binary built with `--features host-profile`".into(),
            );
        }
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("--host-profile {}: {e}", dir.display()))?;
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    /// Starts sampling; the samples are written when the returned guard is finished.
    pub fn start(&self, label: &str) -> Result<Sampling, String> {
        Sampling::start(self.dir.join(label.replace(['/', ' '], "_")))
    }
}

/// A running profile.
pub struct Sampling {
    #[cfg(feature = "host-profile")]
    guard: pprof::ProfilerGuard<'static>,
    stem: PathBuf,
}

impl Sampling {
    #[cfg(feature = "host-profile")]
    fn start(stem: PathBuf) -> Result<Self, String> {
        let guard = pprof::ProfilerGuardBuilder::default()
            .frequency(FREQUENCY)
            .blocklist(&["libc", "libgcc", "pthread", "vdso"])
            .build()
            .map_err(|e| format!("starting the host profiler: {e}"))?;
        Ok(Self { guard, stem })
    }

    #[cfg(not(feature = "host-profile"))]
    fn start(stem: PathBuf) -> Result<Self, String> {
        let _ = stem;
        Err("--host-profile needs a binary built with `--features host-profile`".into())
    }

    /// Stops sampling and writes `<label>.svg` (flame graph) and `<label>.txt` (top functions).
    pub fn finish(self) -> Result<(), String> {
        #[cfg(feature = "host-profile")]
        {
            let report = self
                .guard
                .report()
                .build()
                .map_err(|e| format!("host profile: {e}"))?;
            // Not `with_extension`: preset names have dots (`llama-3.1-8b`).
            let svg = PathBuf::from(format!("{}.svg", self.stem.display()));
            let file =
                std::fs::File::create(&svg).map_err(|e| format!("{}: {e}", svg.display()))?;
            report
                .flamegraph(file)
                .map_err(|e| format!("{}: {e}", svg.display()))?;
            let samples: Vec<(Vec<String>, isize)> = report
                .data
                .iter()
                .map(|(frames, &count)| {
                    // Innermost first; inlined functions of one frame are listed innermost first.
                    let names = frames
                        .frames
                        .iter()
                        .flat_map(|symbols| symbols.iter().map(|s| s.name()))
                        .collect();
                    (names, count)
                })
                .collect();
            let txt = PathBuf::from(format!("{}.txt", self.stem.display()));
            std::fs::write(&txt, summary(&samples))
                .map_err(|e| format!("{}: {e}", txt.display()))?;
        }
        #[cfg(not(feature = "host-profile"))]
        let _ = self.stem;
        Ok(())
    }
}

/// The functions with the most samples: inclusive (on the stack) and self (innermost).
#[cfg_attr(not(feature = "host-profile"), allow(dead_code))]
fn summary(samples: &[(Vec<String>, isize)]) -> String {
    use std::collections::{HashMap, HashSet};
    let total: isize = samples.iter().map(|(_, c)| c).sum();
    let mut inclusive: HashMap<&str, isize> = HashMap::new();
    let mut own: HashMap<&str, isize> = HashMap::new();
    for (names, count) in samples {
        let mut seen = HashSet::new();
        for name in names {
            if seen.insert(name.as_str()) {
                *inclusive.entry(name).or_default() += count;
            }
        }
        if let Some(leaf) = names.first() {
            *own.entry(leaf).or_default() += count;
        }
    }
    let mut out = format!("{total} samples at {FREQUENCY} Hz\n");
    for (title, table) in [("inclusive", inclusive), ("self", own)] {
        let mut rows: Vec<_> = table.into_iter().collect();
        rows.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        out.push_str(&format!("\n## {title}\n"));
        for (name, count) in rows.into_iter().take(120) {
            let pct = 100.0 * count as f64 / total.max(1) as f64;
            out.push_str(&format!("{pct:6.2}% {count:7} {name}\n"));
        }
    }
    out
}
