//! Component dependencies: the `greet` example imports
//! `example:greeting/greeter`, which the `greeter` example exports; `skiff
//! build` composes them (wac-graph) into one component that imports only
//! `wasi:*`, records greeter's digest in `skiff.lock`, and builds the same
//! bytes every time. The composed app answers through a real `skiff up`.
//! Dependencies that do not fit are errors naming the interface.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the report

mod common;

use std::path::Path;

use bytes::Bytes;
use http::Method;

use common::{greet_manifest, provided_by};

const INTERFACE: &str = common::GREETER;

/// `skiff <args>` in `dir`: (exit code, stdout, stderr).
fn skiff(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let mut command = common::skiff_command(dir);
    command.args(args);
    common::outcome(command)
}

fn fails(dir: &Path, args: &[&str], messages: &[&str]) {
    let (code, _, err) = skiff(dir, args);
    assert_ne!(code, 0, "skiff {args:?} should fail");
    for message in messages {
        assert!(
            err.contains(message),
            "skiff {args:?}: expected {message:?} in:\n{err}"
        );
    }
}

/// The digest `skiff package` prints for the bundle of `app`.
fn package_digest(app: &Path, out: &Path) -> String {
    let (code, stdout, err) = skiff(
        app,
        &["package", ".", "--out", out.to_str().unwrap(), "--no-build"],
    );
    assert_eq!(code, 0, "{err}");
    let printed: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    printed["digest"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_composed_example_builds_the_same_bytes_and_answers_through_a_node() {
    common::examples_dir();
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    let app = greet_manifest(work, "greet", &provided_by("greeter"));

    // Two builds: the same bundle, and skiff.lock pins greeter's digest.
    let first = package_digest(&app, &work.join("a.skiff"));
    let lock = std::fs::read_to_string(app.join("skiff.lock")).unwrap();
    let greeter = skiff_sdk::Digest::of(&common::example("greeter")).to_string();
    assert!(
        lock.contains(&format!("interface = \"{INTERFACE}\"")) && lock.contains(&greeter),
        "{lock}"
    );
    assert_eq!(package_digest(&app, &work.join("b.skiff")), first);
    assert_eq!(
        std::fs::read_to_string(app.join("skiff.lock")).unwrap(),
        lock
    );
    assert_eq!(
        std::fs::read(work.join("a.skiff")).unwrap(),
        std::fs::read(work.join("b.skiff")).unwrap()
    );

    // The composed component imports only what the host provides, and
    // greets through a node.
    let up = common::skiff_up(work);
    let (code, _, err) = skiff(work, &["deploy", app.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains(&format!("composed greet with {INTERFACE}")),
        "{err}"
    );
    let reply = common::send(
        up.ingress(),
        "greet.localhost",
        Method::GET,
        "/?name=skiff",
        Bytes::new(),
    )
    .await;
    assert_eq!(
        reply.text(),
        "Hello, skiff! (greeted by the greeter component)\n"
    );
    drop(up);
}

#[test]
fn dependencies_that_do_not_fit_are_errors_naming_the_interface() {
    common::examples_dir();
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    let build = |app: &Path| -> Vec<String> {
        vec![
            "package".into(),
            app.to_str().unwrap().into(),
            "--out".into(),
            work.join("x.skiff").to_str().unwrap().into(),
            "--no-build".into(),
        ]
    };
    let run = |app: &Path, messages: &[&str]| {
        let args = build(app);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        fails(work, &args, messages);
    };

    // No dependency: the import is named, and nothing provides it.
    let app = greet_manifest(work, "none", "");
    run(
        &app,
        &[
            "imports example:greeting/greeter",
            "the host does not provide",
        ],
    );
    // A component that does not export the interface.
    let app = greet_manifest(work, "wrong", &provided_by("hello"));
    run(
        &app,
        &[
            &format!("dependencies.\"{INTERFACE}\""),
            &format!("does not export {INTERFACE}"),
        ],
    );
    // An entry for an interface the app does not import.
    let app = greet_manifest(
        work,
        "unused",
        &format!(
            "{}\n\"example:greeting/other\" = {{ path = {:?} }}",
            provided_by("greeter"),
            common::example_path("greeter").to_str().unwrap()
        ),
    );
    run(
        &app,
        &["dependencies.\"example:greeting/other\"", "does not import"],
    );
    // A missing file, both sources, and a key that is no interface name:
    // each names the file and the entry.
    let app = greet_manifest(
        work,
        "missing",
        &format!("\"{INTERFACE}\" = {{ path = \"nope.wasm\" }}"),
    );
    run(
        &app,
        &[&format!("dependencies.\"{INTERFACE}\""), "nope.wasm"],
    );
    let app = greet_manifest(
        work,
        "both",
        &format!("\"{INTERFACE}\" = {{ path = \"a.wasm\", oci = \"oci://127.0.0.1:1/a:b\" }}"),
    );
    run(&app, &["skiff.toml:", "exactly one of path"]);
    let app = greet_manifest(work, "badkey", "\"greeter\" = { path = \"a.wasm\" }");
    run(&app, &["skiff.toml:", "is not an interface name"]);
}
