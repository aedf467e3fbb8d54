//! `skiff.toml` parsing: any text gives a manifest or an error naming the
//! file, never a panic; a parsed manifest yields a spec the API accepts
//! (its checks that need no store) or rejects with a field.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use skiff_sdk::Digest;
use skiff_sdk::manifest::Manifest;

fuzz_target!(|text: &str| {
    match Manifest::parse(Path::new("skiff.toml"), text) {
        Ok(manifest) => {
            let spec = manifest.to_spec(Digest::of(b"component"), Default::default());
            // Whatever the manifest accepted, the API's checks answer with
            // a clear error or accept it; and the spec survives JSON.
            let _ = skiff_controller::api::check_spec(&spec);
            let json = serde_json::to_vec(&spec).expect("a spec serializes");
            let back: skiff_sdk::api::AppSpec =
                skiff_controller::api::decode_json(&json).expect("a spec round-trips");
            assert_eq!(back, spec);
        }
        Err(e) => {
            let message = e.to_string();
            assert!(message.starts_with("skiff.toml"), "{message}");
        }
    }
});
