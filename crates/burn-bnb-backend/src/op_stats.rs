//! Calls and host time per operation through [`Bnb<B>`](crate::Bnb), to see where a model's
//! time goes on the host.
//!
//! Off by default: an operation then costs one relaxed atomic load more. [`enable`] turns it on
//! for the whole process. The time recorded is how long the call took on the calling thread:
//! for a lazy backend (Burn's fusion) the cost of recording the operation, for an eager one its
//! launch, and for a read-back (`float_into_data`) the wait for the device as well. With a
//! launch counter ([`count_launches_with`], e.g. `burn_bnb_cuda_codegen::launches`), the kernel
//! launches each operation made are counted too.
//!
//! ```ignore
//! burn_bnb_backend::op_stats::enable(true);
//! model.forward(x);
//! for op in burn_bnb_backend::op_stats::take() {
//!     println!("{} x{}: {:?}", op.name, op.calls, op.host);
//! }
//! ```

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{LazyLock, Mutex, OnceLock};
use std::time::{Duration, Instant};

static ENABLED: AtomicBool = AtomicBool::new(false);
static TABLE: LazyLock<Mutex<HashMap<&'static str, Entry>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));
static LAUNCHES: OnceLock<fn() -> u64> = OnceLock::new();

#[derive(Default)]
struct Entry {
    calls: u64,
    host: Duration,
    launches: u64,
}

/// One operation's calls and host time since the last [`take`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpStat {
    /// The operation: the Burn ops-trait method (`float_matmul`, ...) or the quantized
    /// operation (`matmul_4bit`, ...).
    pub name: &'static str,
    /// Calls.
    pub calls: u64,
    /// Total time the calls took on the calling thread.
    pub host: Duration,
    /// Kernel launches the calls made, as the counter given to [`count_launches_with`]
    /// counted them (0 without one).
    pub launches: u64,
}

/// Turns the counting on or off for the process.
pub fn enable(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Counts each operation's kernel launches with `counter` (a process-wide running total, such
/// as `burn_bnb_cuda_codegen::launches`), from now on. The first counter given stays.
pub fn count_launches_with(counter: fn() -> u64) {
    let _ = LAUNCHES.set(counter);
}

fn launches() -> u64 {
    LAUNCHES.get().map_or(0, |count| count())
}

/// Whether the counting is on.
pub fn is_enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The counts since the last call (or since [`enable`]), most host time first, and resets them.
pub fn take() -> Vec<OpStat> {
    let mut table = TABLE.lock().unwrap_or_else(|e| e.into_inner());
    let mut stats: Vec<OpStat> = table
        .drain()
        .map(|(name, e)| OpStat {
            name,
            calls: e.calls,
            host: e.host,
            launches: e.launches,
        })
        .collect();
    stats.sort_by(|a, b| b.host.cmp(&a.host).then(a.name.cmp(b.name)));
    stats
}

/// Times one call while alive (nothing when counting is off).
pub(crate) struct Timer(Option<(&'static str, Instant, u64)>);

impl Timer {
    #[inline(always)]
    pub(crate) fn start(name: &'static str) -> Self {
        Timer(is_enabled().then(|| (name, Instant::now(), launches())))
    }
}

impl Drop for Timer {
    #[inline(always)]
    fn drop(&mut self) {
        if let Some((name, start, launched)) = self.0.take() {
            let host = start.elapsed();
            let launched = launches().saturating_sub(launched);
            let mut table = TABLE.lock().unwrap_or_else(|e| e.into_inner());
            let entry = table.entry(name).or_default();
            entry.calls += 1;
            entry.host += host;
            entry.launches += launched;
        }
    }
}
