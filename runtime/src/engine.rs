//! The one wasmtime [`Engine`] of a process, and the epoch ticker that gives
//! wall-clock deadlines their granularity.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use wasmtime::{
    Config, Enabled, Engine, InstanceAllocationStrategy, OptLevel, PoolingAllocationConfig,
};

use crate::RuntimeError;

/// Default number of instances that may be alive at once on a node (all apps
/// together): the pooling allocator reserves address space for this many up
/// front, so it bounds both concurrency and virtual memory.
pub const DEFAULT_MAX_INSTANCES: u32 = 1000;
/// Default largest linear memory any instance may have, whatever its quota.
/// Matches wasmtime's own pooling default (4 GiB, all of wasm32).
pub const DEFAULT_MAX_INSTANCE_MEMORY: u64 = 4 << 30;
/// Default epoch tick: timeouts are enforced to within one tick. 10 ms keeps
/// the ticker's cost negligible while a 1 s timeout is still precise to 1 %.
pub const DEFAULT_EPOCH_TICK: Duration = Duration::from_millis(10);

/// Linear memory kept resident per reused pool slot: covers the working set
/// of a typical HTTP handler (hello touches ~1 MiB).
const KEEP_RESIDENT_BYTES: usize = 2 << 20;
/// Table bytes kept resident per reused slot.
const KEEP_RESIDENT_TABLE_BYTES: usize = 64 << 10;
/// Async stack bytes kept resident per reused stack.
const KEEP_RESIDENT_STACK_BYTES: usize = 64 << 10;

/// How the engine is configured.
#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// Instances alive at once on this node (sizes the pooling allocator).
    pub max_instances: u32,
    /// Largest linear memory of one instance, whatever an app's quota says.
    pub max_instance_memory: u64,
    /// Try the pooling allocator first (falls back to on-demand if its
    /// address-space reservation fails).
    pub pooling: bool,
    /// Period of the epoch ticker.
    pub epoch_tick: Duration,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            max_instances: DEFAULT_MAX_INSTANCES,
            max_instance_memory: DEFAULT_MAX_INSTANCE_MEMORY,
            pooling: true,
            epoch_tick: DEFAULT_EPOCH_TICK,
        }
    }
}

/// Which instance allocator the engine ended up with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Allocator {
    /// Pre-reserved slots: instantiation is a few microseconds.
    Pooling,
    /// Memory mapped per instance: slower, but needs no large reservation.
    OnDemand {
        /// Why pooling was not used.
        reason: String,
    },
}

fn base_config() -> Config {
    let mut config = Config::new();
    config
        .wasm_component_model(true)
        // Fuel is the CPU quota; epochs give wall-clock deadlines.
        .consume_fuel(true)
        .epoch_interruption(true)
        .parallel_compilation(true)
        .cranelift_opt_level(OptLevel::Speed)
        // Copy-on-write memory images make a fresh instance per request cheap.
        .memory_init_cow(true);
    config
}

/// On-demand allocation for hosts whose address space is too small for the
/// pool: no multi-GiB reservation per linear memory (explicit bounds checks
/// instead of guard regions), so each instance needs only what it uses.
fn small_address_space_config() -> Config {
    let mut config = base_config();
    config
        .memory_reservation(0)
        .memory_guard_size(0)
        .memory_reservation_for_growth(1 << 20);
    config
}

fn pooling_config(opts: &EngineOptions) -> PoolingAllocationConfig {
    let n = opts.max_instances.max(1);
    let mut pool = PoolingAllocationConfig::new();
    // A component instance holds several core instances (the main module
    // plus adapter shims) and tables; size those pools with headroom.
    pool.total_component_instances(n)
        .total_core_instances(n.saturating_mul(8))
        .total_memories(n.saturating_mul(2))
        .total_tables(n.saturating_mul(8))
        .total_stacks(n)
        .total_gc_heaps(n)
        .max_memory_size(usize::try_from(opts.max_instance_memory).unwrap_or(usize::MAX))
        // A freed slot is reset by rewriting its resident pages (found with
        // the PAGEMAP_SCAN ioctl where the kernel has it) instead of dropping
        // them with madvise: the next instance of the same component then
        // starts without page faults. Bounded per slot, so idle memory stays
        // small.
        .linear_memory_keep_resident(KEEP_RESIDENT_BYTES)
        .table_keep_resident(KEEP_RESIDENT_TABLE_BYTES)
        .async_stack_keep_resident(KEEP_RESIDENT_STACK_BYTES)
        .pagemap_scan(Enabled::Auto)
        .max_unused_warm_slots(100);
    pool
}

/// Builds the engine: pooling allocator when the address-space reservation
/// succeeds, otherwise on-demand allocation (small edge devices, or a
/// `ulimit -v`, must still start). The choice is logged with its reason.
pub fn build_engine(opts: &EngineOptions) -> Result<(Engine, Allocator), RuntimeError> {
    if opts.pooling {
        let mut config = base_config();
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling_config(opts)));
        match Engine::new(&config) {
            Ok(engine) => {
                tracing::info!(
                    allocator = "pooling",
                    max_instances = opts.max_instances,
                    max_instance_memory = opts.max_instance_memory,
                    "wasmtime engine ready"
                );
                return Ok((engine, Allocator::Pooling));
            }
            Err(error) => {
                let reason = format!("pooling allocator unavailable: {error:#}");
                tracing::warn!(allocator = "on-demand", %reason, "wasmtime engine falls back to on-demand allocation");
                let engine =
                    Engine::new(&small_address_space_config()).map_err(RuntimeError::Engine)?;
                return Ok((engine, Allocator::OnDemand { reason }));
            }
        }
    }
    let reason = "pooling disabled by configuration".to_owned();
    tracing::info!(allocator = "on-demand", %reason, "wasmtime engine ready");
    let engine = Engine::new(&base_config()).map_err(RuntimeError::Engine)?;
    Ok((engine, Allocator::OnDemand { reason }))
}

/// Advances the engine's epoch every tick on a dedicated thread, so deadlines
/// fire even when every tokio worker is busy. Stops and joins on drop.
pub struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    /// Starts ticking `engine` every `tick`.
    pub fn start(engine: Engine, tick: Duration) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("skiff-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(tick);
                    engine.increment_epoch();
                }
            })?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
