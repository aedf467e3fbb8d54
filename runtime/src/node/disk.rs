//! What a node keeps on disk so that it can serve without the controller:
//! its last assignments and the last endpoints it saw. Every
//! file is written whole (temporary file, fsync, rename), so a crash leaves
//! the old or the new content, never a torn one.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use std::collections::{BTreeMap, HashSet};

use serde::Serialize;
use serde::de::DeserializeOwned;
use skiff_sdk::Digest;

/// The node's state directory.
#[derive(Clone, Debug)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// Opens (creating) the directory.
    pub fn open(root: impl Into<PathBuf>) -> std::io::Result<Self> {
        let root = root.into();
        std::fs::create_dir_all(&root)?;
        Ok(Self { root })
    }

    /// Where the compile cache lives.
    pub fn cache_dir(&self) -> PathBuf {
        self.root.join("cache")
    }

    /// Where an app's static files are laid out: one read-only tree per
    /// distinct set of files, named by the digest of the set, so revisions
    /// that share files share the tree and a tree is never changed once
    /// made.
    pub fn mount_dir(&self, files: &BTreeMap<String, Digest>) -> PathBuf {
        let listing: String = files
            .iter()
            .map(|(path, digest)| format!("{path}\0{digest}\n"))
            .collect();
        let key = Digest::of(listing.as_bytes()).to_string();
        let hex = key.trim_start_matches("sha256:");
        self.root.join("mounts").join(&hex[..32])
    }

    /// Lays out `files` (guest path to content, already checked against
    /// their digests) under [`Self::mount_dir`], whole or not at all: the
    /// tree is built beside and renamed into place.
    pub fn make_mount(
        &self,
        files: &BTreeMap<String, Digest>,
        contents: &BTreeMap<Digest, bytes::Bytes>,
    ) -> std::io::Result<PathBuf> {
        let dir = self.mount_dir(files);
        if dir.is_dir() {
            return Ok(dir);
        }
        let parent = self.root.join("mounts");
        std::fs::create_dir_all(&parent)?;
        let tmp = parent.join(format!(".tmp.{}.{}", std::process::id(), rand_suffix()));
        let made = Self::lay_out(&tmp, files, contents);
        if let Err(e) = made {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
        match std::fs::rename(&tmp, &dir) {
            Ok(()) => Ok(dir),
            // Made meanwhile by another task: the same content.
            Err(_) if dir.is_dir() => {
                let _ = std::fs::remove_dir_all(&tmp);
                Ok(dir)
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                Err(e)
            }
        }
    }

    /// Removes every mount but those in `keep` (paths from
    /// [`Self::mount_dir`]), and any temporary tree a crash left behind;
    /// returns how many trees went. A request still reading a removed tree
    /// keeps its open files. Blocking, and not concurrent with
    /// [`Self::make_mount`] (the node's converge loop runs both).
    pub fn prune_mounts(&self, keep: &HashSet<PathBuf>) -> std::io::Result<usize> {
        let parent = self.root.join("mounts");
        let entries = match std::fs::read_dir(&parent) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        let mut removed = 0;
        for entry in entries {
            let path = entry?.path();
            if !keep.contains(&path) {
                std::fs::remove_dir_all(&path)?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    fn lay_out(
        tmp: &Path,
        files: &BTreeMap<String, Digest>,
        contents: &BTreeMap<Digest, bytes::Bytes>,
    ) -> std::io::Result<()> {
        for (path, digest) in files {
            // Paths were validated by the controller; check again, since
            // a path that escaped would be written outside the tree.
            if skiff_sdk::capability::validate_file_path(path).is_err() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("file path {path:?} is not a plain relative path"),
                ));
            }
            let bytes = contents.get(digest).ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("file {digest} not fetched"),
                )
            })?;
            let target = tmp.join(path);
            if let Some(dir) = target.parent() {
                std::fs::create_dir_all(dir)?;
            }
            write_atomic(&target, bytes)?;
        }
        std::fs::create_dir_all(tmp)
    }

    /// The path of a state file.
    pub fn path(&self, file: &str) -> PathBuf {
        self.root.join(file)
    }

    /// Reads a JSON state file; `None` if it does not exist.
    pub fn read<T: DeserializeOwned>(&self, file: &str) -> std::io::Result<Option<T>> {
        let path = self.path(file);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{}: {e}", path.display()),
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// [`StateDir::read`], but a file that does not parse (a disk error, a
    /// hand edit) is moved aside to `<file>.corrupt` and reported, instead
    /// of stopping the node for good: what it held is fetched again from
    /// the controller once it answers. Other I/O errors still fail.
    pub fn read_or_set_aside<T: DeserializeOwned>(&self, file: &str) -> std::io::Result<Option<T>> {
        match self.read(file) {
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                let path = self.path(file);
                let aside = self.path(&format!("{file}.corrupt"));
                std::fs::rename(&path, &aside)?;
                tracing::warn!(file = %path.display(), moved_to = %aside.display(), error = %e,
                    "a state file is corrupt: set aside; the node starts without it and fetches it again from the controller");
                Ok(None)
            }
            other => other,
        }
    }

    /// Replaces a JSON state file atomically, readable by the owner only.
    /// Blocking: on an async worker, use a [`StateFile`].
    pub fn write<T: Serialize>(&self, file: &str, value: &T) -> std::io::Result<()> {
        let bytes = serde_json::to_vec(value)?;
        write_atomic(&self.path(file), &bytes)
    }
}

/// One state file kept up to date with a value that changes, written off
/// the async workers (serialising and `fsync` take milliseconds for a large
/// value: on a worker they would delay the requests it serves). A write is
/// either awaited ([`StateFile::store`]: the value is on disk before the
/// caller acts on it) or due within a delay ([`StateFile::store_soon`],
/// then [`StateFile::flush_due`]: a burst of changes is one write); never
/// two writes of the file at once.
pub struct StateFile<T: Serialize + Send + Sync + 'static> {
    dir: StateDir,
    file: &'static str,
    /// When the value held by the caller is due on disk.
    due: Option<std::time::Instant>,
    writing: Option<tokio::task::JoinHandle<()>>,
    _value: std::marker::PhantomData<fn(T)>,
}

impl<T: Serialize + Send + Sync + 'static> StateFile<T> {
    pub fn new(dir: StateDir, file: &'static str) -> Self {
        Self {
            dir,
            file,
            due: None,
            writing: None,
            _value: std::marker::PhantomData,
        }
    }

    /// Writes `value` and returns once it is on disk (failures are logged:
    /// the node keeps serving, the controller has the state too).
    pub async fn store(&mut self, value: std::sync::Arc<T>) {
        self.due = None;
        self.finish().await;
        self.start(value);
        self.finish().await;
    }

    /// Notes that the caller's value changed and is due on disk within
    /// `delay` (a due write keeps its time).
    pub fn store_soon(&mut self, delay: std::time::Duration) {
        self.due
            .get_or_insert_with(|| std::time::Instant::now() + delay);
    }

    /// Starts the due write of `value` once the last one is done; returns
    /// how long until it should be called again (`None`: nothing due). The
    /// value is taken only when written, so the caller changes it in
    /// place meanwhile.
    pub fn flush_due(
        &mut self,
        value: impl FnOnce() -> Option<std::sync::Arc<T>>,
    ) -> Option<std::time::Duration> {
        if self.writing.as_ref().is_some_and(|w| w.is_finished()) {
            self.writing = None;
        }
        let at = self.due?;
        let left = at.saturating_duration_since(std::time::Instant::now());
        if !left.is_zero() || self.writing.is_some() {
            // Looked at again once due, or shortly after the write ends.
            return Some(left.max(std::time::Duration::from_millis(10)));
        }
        self.due = None;
        if let Some(value) = value() {
            self.start(value);
        }
        None
    }

    fn start(&mut self, value: std::sync::Arc<T>) {
        let (dir, file) = (self.dir.clone(), self.file);
        self.writing = Some(tokio::task::spawn_blocking(move || {
            if let Err(error) = dir.write(file, &*value) {
                tracing::warn!(file, %error, "could not store a state file");
            }
        }));
    }

    async fn finish(&mut self) {
        if let Some(writing) = self.writing.take() {
            let _ = writing.await;
        }
    }
}

/// How long a change to a state file of `len` entries may wait to be
/// written: at once up to `at_once` entries, then `every` per `at_once`
/// entries (a 10,000-app document is not rewritten every second), at
/// most ten of them.
pub fn store_delay(len: usize, at_once: usize, every: std::time::Duration) -> std::time::Duration {
    if len <= at_once {
        return std::time::Duration::ZERO;
    }
    every * u32::try_from((len / at_once.max(1)).clamp(1, 10)).unwrap_or(10)
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher as _, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_reports_corruption() {
        let dir = std::env::temp_dir().join(format!("skiff-disk-{}", std::process::id()));
        let state = StateDir::open(&dir).unwrap();
        assert_eq!(state.read::<Vec<u32>>("node.json").unwrap(), None);
        state.write("node.json", &vec![1u32, 2]).unwrap();
        assert_eq!(state.read("node.json").unwrap(), Some(vec![1u32, 2]));
        std::fs::write(state.path("node.json"), b"[").unwrap();
        let err = state.read::<Vec<u32>>("node.json").unwrap_err();
        assert!(err.to_string().contains("node.json"), "{err}");
        // Set aside rather than fatal, and kept for a look.
        assert_eq!(
            state.read_or_set_aside::<Vec<u32>>("node.json").unwrap(),
            None
        );
        assert!(!state.path("node.json").exists());
        assert_eq!(
            std::fs::read(state.path("node.json.corrupt")).unwrap(),
            b"["
        );
        assert_eq!(
            state.read_or_set_aside::<Vec<u32>>("node.json").unwrap(),
            None
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn large_state_files_wait_longer() {
        let every = std::time::Duration::from_secs(1);
        assert!(store_delay(1_000, 1_000, every).is_zero());
        assert_eq!(store_delay(1_001, 1_000, every), every);
        assert_eq!(store_delay(10_000, 1_000, every), every * 10);
        assert_eq!(store_delay(1_000_000, 1_000, every), every * 10);
    }

    #[tokio::test]
    async fn a_state_file_is_written_off_the_workers_when_due() {
        let dir = std::env::temp_dir().join(format!("skiff-statefile-{}", std::process::id()));
        let state = StateDir::open(&dir).unwrap();
        let mut file = StateFile::new(state.clone(), "a.json");
        file.store(std::sync::Arc::new(vec![1u32])).await;
        assert_eq!(state.read("a.json").unwrap(), Some(vec![1u32]));
        // Due later: nothing written until then, and the newest value is
        // the one written.
        file.store_soon(std::time::Duration::from_millis(30));
        assert!(file.flush_due(|| unreachable!()).is_some());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while file
            .flush_due(|| Some(std::sync::Arc::new(vec![2u32])))
            .is_some()
        {
            assert!(std::time::Instant::now() < deadline);
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        file.finish().await;
        assert_eq!(state.read("a.json").unwrap(), Some(vec![2u32]));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn mounts_are_whole_and_pruned_when_unwanted() {
        let dir = std::env::temp_dir().join(format!("skiff-mounts-{}", std::process::id()));
        let state = StateDir::open(&dir).unwrap();
        let page = bytes::Bytes::from_static(b"<h1>hi</h1>");
        let digest = Digest::of(&page);
        let contents = BTreeMap::from([(digest, page)]);
        let one = BTreeMap::from([("static/index.html".to_owned(), digest)]);
        let two = BTreeMap::from([("index.html".to_owned(), digest)]);
        let kept = state.make_mount(&one, &contents).unwrap();
        let gone = state.make_mount(&two, &contents).unwrap();
        assert_ne!(kept, gone);
        assert_eq!(
            std::fs::read(kept.join("static/index.html")).unwrap(),
            b"<h1>hi</h1>"
        );
        // A path that would leave the tree is refused, and leaves nothing.
        let bad = BTreeMap::from([("../x".to_owned(), digest)]);
        assert!(state.make_mount(&bad, &contents).is_err());
        // As would a tree a crash left half made.
        std::fs::create_dir_all(dir.join("mounts/.tmp.1.2/static")).unwrap();

        let keep = HashSet::from([kept.clone()]);
        assert_eq!(state.prune_mounts(&keep).unwrap(), 2);
        assert!(kept.is_dir() && !gone.exists());
        let left: Vec<_> = std::fs::read_dir(dir.join("mounts")).unwrap().collect();
        assert_eq!(left.len(), 1);
        assert_eq!(state.prune_mounts(&keep).unwrap(), 0);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
