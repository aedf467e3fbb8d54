//! Artifact validation (what `POST /v1/artifacts` runs on uploads) and
//! bundle reading (what `skiff deploy x.skiff` runs): any bytes are
//! accepted or refused with a message, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Err(message) = skiff_sdk::component::validate_component(bytes) {
        assert!(!message.is_empty());
    }
    if let Ok(bundle) = skiff_sdk::bundle::Bundle::from_bytes(bytes) {
        // What was read writes back, and reads back the same.
        if let Ok(again) = bundle.to_bytes() {
            let back = skiff_sdk::bundle::Bundle::from_bytes(&again).expect("own bundle reads");
            assert_eq!(back, bundle);
        }
    }
});
