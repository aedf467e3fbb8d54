//! The API's JSON decoding of every request body type, as the handlers run
//! it (`decode_json`), plus the spec checks that need no store: any bytes
//! give a value or a 4xx error, never a panic, and a decoded value
//! re-encodes to an equal value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde::Serialize;
use serde::de::DeserializeOwned;
use skiff_controller::api::decode_json;
use skiff_controller::error::ApiError;
use skiff_sdk::api::{AppSpec, Heartbeat, RegisterNode, RollbackRequest, ScaleRequest};

fn check<T: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug>(bytes: &[u8]) -> Option<T> {
    match decode_json::<T>(bytes) {
        Ok(value) => {
            let again = serde_json::to_vec(&value).expect("serializes");
            let back: T = decode_json(&again).expect("round-trips");
            assert_eq!(back, value);
            Some(value)
        }
        Err(ApiError::BadRequest { .. } | ApiError::Invalid { .. }) => None,
        Err(other) => panic!("decoding gave a non-4xx error: {other}"),
    }
}

fuzz_target!(|bytes: &[u8]| {
    if let Some(spec) = check::<AppSpec>(bytes) {
        match skiff_controller::api::check_spec(&spec) {
            Ok(()) | Err(ApiError::Invalid { .. }) => {}
            Err(other) => panic!("spec check gave a non-422 error: {other}"),
        }
    }
    check::<ScaleRequest>(bytes);
    check::<RollbackRequest>(bytes);
    check::<RegisterNode>(bytes);
    check::<Heartbeat>(bytes);
});
