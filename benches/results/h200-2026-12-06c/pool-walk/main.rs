use std::sync::Arc;
use cubecl_ir::MemoryDeviceProperties;
use cubecl_runtime::logging::ServerLogger;
use cubecl_runtime::memory_management::*;
use cubecl_runtime::storage::BytesStorage;

fn run(tables: usize, table_size: u64) {
    let props = MemoryDeviceProperties { max_page_size: 1 << 30, alignment: 512 };
    let mut mm = MemoryManagement::from_configuration(
        BytesStorage::default(), &props, MemoryConfiguration::SubSlices,
        Arc::new(ServerLogger::default()), MemoryManagementOptions::new("test"));
    mm.mode(MemoryAllocationMode::Persistent);
    // Weights: a big buffer and a small table each (the table as `create` reserves it: rounded).
    let weights: Vec<_> = (0..tables).map(|_| (mm.reserve(1 << 20).unwrap(), mm.reserve(table_size).unwrap())).collect();
    mm.mode(MemoryAllocationMode::Auto);
    let warm: Vec<_> = (0..10).map(|_| mm.reserve(24).unwrap()).collect();
    drop(warm);
    let before = mm.memory_usage().bytes_reserved;
    let t = std::time::Instant::now();
    for _ in 0..10_000 {
        // A launch's metadata upload: `create_with_data` reserves the unrounded length.
        let h = mm.reserve(24).unwrap();
        drop(h);
    }
    let dt = t.elapsed();
    let after = mm.memory_usage().bytes_reserved;
    println!("{tables} tables of {table_size} B: reserved +{} B over 10000 metadata uploads, {:.2} us each",
        after - before, dt.as_secs_f64() * 1e6 / 1e4);
    drop(weights);
}

fn main() {
    run(0, 512);
    run(1, 512);
    run(224, 512);
    run(448, 512);
    run(1, 2048);
}
