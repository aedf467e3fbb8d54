//! App bundles: the manifest, the component and any declared static files
//! in one deterministic archive (POSIX ustar), so the same inputs always
//! give the same bytes and the same digest. Entries, in order:
//! `skiff.toml` (verbatim), `component.wasm`, then `files/<path>` sorted by
//! path; every entry has mode 0644, owner 0:0 and time 0.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use crate::manifest::{MANIFEST_FILE, Manifest};

/// The bundle's file extension.
pub const BUNDLE_EXTENSION: &str = "skiff";
/// Name of the component entry.
pub const COMPONENT_ENTRY: &str = "component.wasm";
const BLOCK: usize = 512;
/// Longest entry name (ustar's name field without the prefix field).
const MAX_NAME: usize = 100;

/// Why a bundle could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// A file could not be read.
    #[error("reading {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// An entry name does not fit or is not a plain relative path.
    #[error("{0:?} cannot be stored in a bundle (at most 100 bytes, relative, no `..`)")]
    BadName(String),
    /// The archive is not a Skiff bundle.
    #[error("not a Skiff bundle: {0}")]
    Malformed(String),
}

/// A bundle in memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bundle {
    /// The manifest's text, as written.
    pub manifest: String,
    /// The component's bytes.
    pub component: Vec<u8>,
    /// Static files by relative path.
    pub files: BTreeMap<PathBuf, Vec<u8>>,
}

fn read(path: &Path) -> Result<Vec<u8>, BundleError> {
    std::fs::read(path).map_err(|source| BundleError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn plain_relative(path: &Path) -> bool {
    path.components().all(|c| matches!(c, Component::Normal(_)))
}

impl Bundle {
    /// Collects the manifest at `manifest_file` (already parsed as
    /// `manifest`), its built component and its declared files.
    pub fn collect(manifest_file: &Path, manifest: &Manifest) -> Result<Self, BundleError> {
        let root = manifest_file.parent().unwrap_or(Path::new("."));
        let text = read(manifest_file)?;
        Ok(Self {
            manifest: String::from_utf8_lossy(&text).into_owned(),
            component: read(&root.join(&manifest.component.source))?,
            files: Self::read_files(manifest_file, manifest)?,
        })
    }

    /// Reads the manifest's declared static files, by relative path.
    pub fn read_files(
        manifest_file: &Path,
        manifest: &Manifest,
    ) -> Result<BTreeMap<PathBuf, Vec<u8>>, BundleError> {
        let root = manifest_file.parent().unwrap_or(Path::new("."));
        let mut files = BTreeMap::new();
        for file in &manifest.component.files {
            if !plain_relative(file) {
                return Err(BundleError::BadName(file.display().to_string()));
            }
            files.insert(file.clone(), read(&root.join(file))?);
        }
        Ok(files)
    }

    /// The archive's bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>, BundleError> {
        let mut out = Vec::new();
        append(&mut out, MANIFEST_FILE, self.manifest.as_bytes())?;
        append(&mut out, COMPONENT_ENTRY, &self.component)?;
        for (path, bytes) in &self.files {
            let name = format!("files/{}", path.display());
            append(&mut out, &name, bytes)?;
        }
        out.resize(out.len() + 2 * BLOCK, 0);
        Ok(out)
    }

    /// Reads an archive made by [`Bundle::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, BundleError> {
        let bad = |why: &str| BundleError::Malformed(why.to_owned());
        let mut entries: Vec<(String, Vec<u8>)> = Vec::new();
        let mut at = 0;
        while at + BLOCK <= bytes.len() {
            let header = &bytes[at..at + BLOCK];
            if header.iter().all(|b| *b == 0) {
                break;
            }
            if &header[257..263] != b"ustar\0" {
                return Err(bad("an entry header is not ustar"));
            }
            let stored: u32 =
                octal(&header[148..156]).ok_or_else(|| bad("bad checksum field"))? as u32;
            if stored != checksum(header) {
                return Err(bad("an entry header fails its checksum"));
            }
            let name =
                field_str(&header[..100]).ok_or_else(|| bad("an entry name is not UTF-8"))?;
            let size =
                usize::try_from(octal(&header[124..136]).ok_or_else(|| bad("bad size field"))?)
                    .map_err(|_| bad("entry too large"))?;
            let start = at + BLOCK;
            let end = start
                .checked_add(size)
                .filter(|e| *e <= bytes.len())
                .ok_or_else(|| bad("truncated"))?;
            entries.push((name, bytes[start..end].to_vec()));
            at = start + size.div_ceil(BLOCK) * BLOCK;
        }
        let mut manifest = None;
        let mut component = None;
        let mut files = BTreeMap::new();
        for (name, data) in entries {
            match name.as_str() {
                MANIFEST_FILE => {
                    manifest =
                        Some(String::from_utf8(data).map_err(|_| bad("skiff.toml is not UTF-8"))?)
                }
                COMPONENT_ENTRY => component = Some(data),
                other => match other.strip_prefix("files/").map(PathBuf::from) {
                    Some(path) if plain_relative(&path) => {
                        files.insert(path, data);
                    }
                    _ => {
                        return Err(BundleError::Malformed(format!(
                            "unexpected entry {other:?}"
                        )));
                    }
                },
            }
        }
        Ok(Self {
            manifest: manifest.ok_or_else(|| bad("no skiff.toml"))?,
            component: component.ok_or_else(|| bad("no component.wasm"))?,
            files,
        })
    }
}

fn append(out: &mut Vec<u8>, name: &str, data: &[u8]) -> Result<(), BundleError> {
    if name.len() > MAX_NAME || name.is_empty() {
        return Err(BundleError::BadName(name.to_owned()));
    }
    let mut header = [0u8; BLOCK];
    header[..name.len()].copy_from_slice(name.as_bytes());
    put_octal(&mut header[100..108], 0o644);
    put_octal(&mut header[108..116], 0);
    put_octal(&mut header[116..124], 0);
    put_octal(&mut header[124..136], data.len() as u64);
    put_octal(&mut header[136..148], 0);
    header[156] = b'0';
    header[257..263].copy_from_slice(b"ustar\0");
    header[263..265].copy_from_slice(b"00");
    let sum = checksum(&header);
    // Checksum: six octal digits, NUL, space.
    let digits = format!("{sum:06o}");
    header[148..154].copy_from_slice(digits.as_bytes());
    header[154] = 0;
    header[155] = b' ';
    out.extend_from_slice(&header);
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(BLOCK) * BLOCK, 0);
    Ok(())
}

/// Sum of the header bytes with the checksum field read as spaces.
fn checksum(header: &[u8]) -> u32 {
    header
        .iter()
        .enumerate()
        .map(|(i, b)| {
            if (148..156).contains(&i) {
                u32::from(b' ')
            } else {
                u32::from(*b)
            }
        })
        .sum()
}

/// Writes `value` as zero-padded octal digits followed by NUL.
fn put_octal(field: &mut [u8], value: u64) {
    let last = field.len() - 1;
    let digits = format!("{value:0last$o}");
    field[..last].copy_from_slice(digits.as_bytes());
    field[last] = 0;
}

fn octal(field: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(field).ok()?;
    let text = text.trim_matches(|c: char| c == '\0' || c == ' ');
    u64::from_str_radix(text, 8).ok()
}

fn field_str(field: &[u8]) -> Option<String> {
    let end = field.iter().position(|b| *b == 0).unwrap_or(field.len());
    std::str::from_utf8(&field[..end]).ok().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Bundle {
        Bundle {
            manifest: "manifest_version = 1\n".into(),
            component: vec![0, 97, 115, 109, 13, 0, 1, 0],
            files: [
                (PathBuf::from("static/b.txt"), b"b".to_vec()),
                (PathBuf::from("static/a.txt"), vec![7; 1000]),
            ]
            .into(),
        }
    }

    #[test]
    fn round_trips_deterministically() {
        let bytes = sample().to_bytes().unwrap();
        assert_eq!(
            bytes,
            sample().to_bytes().unwrap(),
            "same inputs, same bytes"
        );
        assert_eq!(bytes.len() % BLOCK, 0);
        assert_eq!(Bundle::from_bytes(&bytes).unwrap(), sample());
    }

    #[test]
    fn is_a_standard_tar() {
        // The system tar lists it: the format is plain ustar.
        let dir = std::env::temp_dir().join(format!("skiff-bundle-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("app.skiff");
        std::fs::write(&file, sample().to_bytes().unwrap()).unwrap();
        if let Ok(out) = std::process::Command::new("tar")
            .arg("-tf")
            .arg(&file)
            .output()
        {
            let listing = String::from_utf8_lossy(&out.stdout);
            assert_eq!(
                listing.lines().collect::<Vec<_>>(),
                [
                    "skiff.toml",
                    "component.wasm",
                    "files/static/a.txt",
                    "files/static/b.txt"
                ]
            );
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn rejects_what_it_did_not_make() {
        assert!(Bundle::from_bytes(b"not a tar").is_err());
        let mut bytes = sample().to_bytes().unwrap();
        bytes[600] ^= 1; // inside the first entry's data: still valid
        assert!(Bundle::from_bytes(&bytes).is_ok());
        bytes[10] ^= 1; // inside the first header: checksum fails
        assert!(matches!(
            Bundle::from_bytes(&bytes),
            Err(BundleError::Malformed(_))
        ));
        let escaping = Bundle {
            files: [(PathBuf::from("../x"), vec![])].into(),
            ..sample()
        };
        let bytes = escaping.to_bytes().unwrap();
        assert!(Bundle::from_bytes(&bytes).is_err());
    }
}
