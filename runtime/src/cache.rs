//! The on-disk component cache.
//!
//! A component is identified by the sha256 of its bytes. Its source is kept at
//! `<root>/sources/<hex>.wasm`; it is compiled once with
//! [`Engine::precompile_component`] and the result kept at
//! `<root>/compiled/<engine-hash>/<hex>.cwasm`, where `<engine-hash>` is the
//! engine's [`precompile_compatibility_hash`](Engine::precompile_compatibility_hash):
//! a new wasmtime version or different engine settings get a fresh directory
//! instead of loading artifacts they cannot run. Later loads map the compiled
//! file with [`Component::deserialize_file`], which takes milliseconds.
//!
//! Nothing is compiled on [`ComponentCache::put`]; compilation happens on the
//! first [`ComponentCache::load`], so registering many components is cheap.
//!
//! The cache is bounded: [`ComponentCache::prune`] removes the components no
//! longer wanted, least recently loaded first, until it fits its budget
//! (each load marks the source's modification time).

use std::collections::HashSet;
use std::collections::hash_map::DefaultHasher;
use std::fs;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use skiff_sdk::Digest;
use wasmtime::Engine;
use wasmtime::component::Component;

use crate::RuntimeError;

/// Counters that show what the cache did (tests assert on these rather than
/// on timings).
#[derive(Debug, Default)]
pub struct CacheStats {
    compiled: AtomicU64,
    deserialized: AtomicU64,
}

impl CacheStats {
    /// Components compiled by this process.
    pub fn compiled(&self) -> u64 {
        self.compiled.load(Ordering::Relaxed)
    }
    /// Compiled artifacts loaded from disk by this process.
    pub fn deserialized(&self) -> u64 {
        self.deserialized.load(Ordering::Relaxed)
    }
}

/// What [`ComponentCache::prune`] removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Components removed (source and compiled form).
    pub components: usize,
    /// Bytes freed.
    pub bytes: u64,
    /// Bytes the cache holds afterwards.
    pub kept_bytes: u64,
}

/// Content-addressed store of component sources and their compiled form.
pub struct ComponentCache {
    engine: Engine,
    sources: PathBuf,
    compiled: PathBuf,
    stats: CacheStats,
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> RuntimeError {
    let path = path.to_owned();
    move |source| RuntimeError::CacheIo {
        action,
        path,
        source,
    }
}

/// Writes `bytes` to `path` so that `path` either does not exist or holds all
/// of them: write a temporary file in the same directory, fsync, rename. The
/// temporary name is unique per writer (process id and a per-process
/// counter), and `create_new` refuses to share one, so concurrent writers of
/// the same file (other processes, or other runtimes in this one) never mix
/// their bytes.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), RuntimeError> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.{}.{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(io_err("writing", path))
}

impl ComponentCache {
    /// Opens (creating if needed) a cache rooted at `root` for `engine`.
    pub fn open(engine: Engine, root: impl AsRef<Path>) -> Result<Self, RuntimeError> {
        let root = root.as_ref();
        let mut hasher = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let sources = root.join("sources");
        let compiled = root
            .join("compiled")
            .join(format!("{:016x}", hasher.finish()));
        for dir in [&sources, &compiled] {
            fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
        }
        Ok(Self {
            engine,
            sources,
            compiled,
            stats: CacheStats::default(),
        })
    }

    /// What this cache has done so far.
    pub fn stats(&self) -> &CacheStats {
        &self.stats
    }

    fn source_path(&self, digest: &Digest) -> PathBuf {
        self.sources.join(format!("{}.wasm", digest.hex()))
    }

    fn compiled_path(&self, digest: &Digest) -> PathBuf {
        self.compiled.join(format!("{}.cwasm", digest.hex()))
    }

    /// Stores component bytes (if not already present) and returns their
    /// digest. Does not compile.
    pub fn put(&self, bytes: &[u8]) -> Result<Digest, RuntimeError> {
        let digest = Digest::of(bytes);
        let path = self.source_path(&digest);
        if !path.exists() {
            write_atomically(&path, bytes)?;
        }
        Ok(digest)
    }

    /// Whether the source of `digest` is present.
    pub fn contains(&self, digest: &Digest) -> bool {
        self.source_path(digest).is_file()
    }

    /// Removes the components not in `keep`, least recently loaded first,
    /// until the cache holds at most `budget` bytes (sources and this
    /// engine's compiled forms). Those in `keep` stay even over budget.
    /// Blocking: call it off the async workers.
    pub fn prune(&self, keep: &HashSet<Digest>, budget: u64) -> Result<Pruned, RuntimeError> {
        let entries = fs::read_dir(&self.sources).map_err(io_err("listing", &self.sources))?;
        let mut total = 0;
        // (last load, size, digest) of each component that may go.
        let mut candidates = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(digest) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".wasm"))
                .and_then(|hex| format!("sha256:{hex}").parse::<Digest>().ok())
            else {
                continue; // a temporary file being written
            };
            let Ok(meta) = entry.metadata() else { continue };
            let compiled = fs::metadata(self.compiled_path(&digest)).map_or(0, |m| m.len());
            let size = meta.len() + compiled;
            total += size;
            if !keep.contains(&digest) {
                let used = meta.modified().unwrap_or(std::time::UNIX_EPOCH);
                candidates.push((used, size, digest));
            }
        }
        candidates.sort();
        let mut pruned = Pruned::default();
        for (_, size, digest) in candidates {
            if total <= budget {
                break;
            }
            // The compiled form first: a source without one is compiled
            // again if wanted, never the other way round. A loaded
            // component keeps its mapping of a removed file.
            for path in [self.compiled_path(&digest), self.source_path(&digest)] {
                match fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_err("removing", &path)(e)),
                }
            }
            tracing::info!(%digest, bytes = size, "component removed from the cache");
            total -= size;
            pruned.components += 1;
            pruned.bytes += size;
        }
        pruned.kept_bytes = total;
        Ok(pruned)
    }

    /// Loads a component, compiling it first if this engine never has.
    /// Blocking (compilation takes up to seconds): call it off the async
    /// workers, e.g. with `spawn_blocking`.
    pub fn load(&self, digest: &Digest) -> Result<Component, RuntimeError> {
        // Marks the use, for `prune` (best effort: a read-only cache works).
        let _ = fs::File::options()
            .write(true)
            .open(self.source_path(digest))
            .and_then(|f| f.set_modified(std::time::SystemTime::now()));
        let compiled = self.compiled_path(digest);
        if compiled.is_file() {
            match self.deserialize(&compiled) {
                Ok(component) => {
                    self.stats.deserialized.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%digest, "component loaded from the compile cache");
                    return Ok(component);
                }
                Err(error) => {
                    // A damaged or foreign file: drop it and compile afresh.
                    tracing::warn!(%digest, error = %format!("{error:#}"), "discarding unusable compiled artifact");
                    let _ = fs::remove_file(&compiled);
                }
            }
        }
        let source = self.source_path(digest);
        let bytes = match fs::read(&source) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(RuntimeError::UnknownComponent(*digest));
            }
            Err(e) => return Err(io_err("reading", &source)(e)),
        };
        if Digest::of(&bytes) != *digest {
            let _ = fs::remove_file(&source);
            return Err(RuntimeError::UnknownComponent(*digest));
        }
        let started = std::time::Instant::now();
        let artifact =
            self.engine
                .precompile_component(&bytes)
                .map_err(|source| RuntimeError::Compile {
                    digest: *digest,
                    source,
                })?;
        self.stats.compiled.fetch_add(1, Ordering::Relaxed);
        tracing::info!(%digest, elapsed_ms = started.elapsed().as_millis() as u64, bytes = bytes.len(), "component compiled");
        write_atomically(&compiled, &artifact)?;
        self.deserialize(&compiled)
            .map_err(|source| RuntimeError::Compile {
                digest: *digest,
                source,
            })
    }

    #[allow(unsafe_code)]
    fn deserialize(&self, path: &Path) -> wasmtime::Result<Component> {
        // SAFETY: `deserialize_file` trusts the file to be an artifact that
        // `Engine::precompile_component` produced and that nobody changed
        // since. That holds here: this is the only function that loads from
        // the cache, the path is derived from a digest inside the cache's own
        // `compiled/<engine-hash>/` directory (never from user input), and the
        // only writer of that directory is `load` above, which writes whole
        // files atomically (temporary file, fsync, rename), so a crash never
        // leaves a torn artifact. wasmtime additionally checks the header and
        // engine compatibility, so a file from another engine is rejected.
        unsafe { Component::deserialize_file(&self.engine, path) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn used_at(cache: &ComponentCache, digest: &Digest, secs: u64) {
        let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
        fs::File::options()
            .write(true)
            .open(cache.source_path(digest))
            .and_then(|f| f.set_modified(when))
            .unwrap();
    }

    #[test]
    fn prune_removes_unwanted_components_least_recently_loaded_first() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ComponentCache::open(Engine::default(), dir.path()).unwrap();
        let [old, newer, wanted] = [b"old", b"new", b"eek"].map(|b| {
            let digest = cache.put(&b.repeat(100)).unwrap();
            assert!(cache.contains(&digest));
            digest
        });
        used_at(&cache, &old, 1_000);
        used_at(&cache, &newer, 2_000);
        used_at(&cache, &wanted, 500);
        let keep = HashSet::from([wanted]);

        // Within budget: nothing goes.
        assert_eq!(cache.prune(&keep, 900).unwrap().components, 0);
        // Over it: the least recently loaded unwanted one goes first.
        let pruned = cache.prune(&keep, 600).unwrap();
        assert_eq!(
            (pruned.components, pruned.bytes, pruned.kept_bytes),
            (1, 300, 600)
        );
        assert!(!cache.contains(&old) && cache.contains(&newer));
        // A wanted component stays even when the budget cannot be met.
        let pruned = cache.prune(&keep, 0).unwrap();
        assert_eq!((pruned.components, pruned.kept_bytes), (1, 300));
        assert!(cache.contains(&wanted) && !cache.contains(&newer));
    }
}
