//! Bearer and enrollment tokens, and page cursors: all arrive from anyone on the network.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tender_core::DeviceId;
use tender_server::api::cursor;
use tender_server::auth::{API_TOKEN_PREFIX, ENROLLMENT_TOKEN_PREFIX, parse};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for prefix in [API_TOKEN_PREFIX, ENROLLMENT_TOKEN_PREFIX] {
        if let Some((_, secret)) = parse(prefix, text) {
            assert_eq!(secret.len(), 43);
        }
    }
    let _ = cursor::decode::<DeviceId>("d1:", text);
});
