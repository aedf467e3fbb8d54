//! Manifest snapshots: every `sdk/tests/manifests/*.toml` is parsed and the
//! outcome (the spec it yields, or the error message) compared with the
//! `.snap` file next to it. `SKIFF_UPDATE_SNAPSHOTS=1` rewrites the
//! snapshots; review the diff.

use super::*;

fn outcome(name: &str, text: &str) -> String {
    match Manifest::parse(Path::new(name), text) {
        Ok(m) if m.job.is_some() => {
            let spec = m.to_job_spec(Digest::of(b"component"));
            let spec = serde_json::to_string_pretty(&spec).unwrap_or_default();
            format!("ok: job {}\n{spec}\n", m.name)
        }
        Ok(m) => {
            let digest = Digest::of(b"component");
            let spec = serde_json::to_string_pretty(&m.to_spec(digest, Default::default()))
                .unwrap_or_default();
            format!(
                "ok: {} ({} replicas, source {}, build {:?})\n{spec}\n",
                m.name,
                m.replicas,
                m.component.source.display(),
                m.component.build
            )
        }
        Err(e) => format!("error: {e}\n"),
    }
}

#[test]
fn snapshots() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/manifests");
    let update = std::env::var_os("SKIFF_UPDATE_SNAPSHOTS").is_some();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 10,
        "snapshot inputs missing in {}",
        dir.display()
    );
    let mut mismatched = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let name = format!("{}", file.file_name().unwrap().to_string_lossy());
        let got = outcome(&name, &text);
        let snap = file.with_extension("snap");
        if update {
            std::fs::write(&snap, &got).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&snap).unwrap_or_default();
        if got != want {
            mismatched.push(format!("{name}:\n--- want\n{want}--- got\n{got}"));
        }
    }
    assert!(
        mismatched.is_empty(),
        "snapshots differ (SKIFF_UPDATE_SNAPSHOTS=1 to accept):\n{}",
        mismatched.join("\n")
    );
}

#[test]
fn errors_name_file_line_and_key() {
    let text = "manifest_version = 1\nname = \"web\"\n[component]\nsource = \"a.wasm\"\n\n[resources]\nmemory = \"64Mb\"\n";
    let err = Manifest::parse(Path::new("skiff.toml"), text).unwrap_err();
    assert_eq!(err.line, Some(7));
    assert_eq!(err.key.as_deref(), Some("resources.memory"));
    assert!(
        err.to_string()
            .starts_with("skiff.toml:7: resources.memory: \"64Mb\" is not a quantity"),
        "{err}"
    );
    assert!(err.to_string().ends_with("did you mean \"64Mi\"?"), "{err}");
}
