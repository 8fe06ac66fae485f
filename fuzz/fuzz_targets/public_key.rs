//! Public keys operators submit to preauthorize devices.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tender_server::ca::public_key_fingerprint;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = public_key_fingerprint(text);
    }
    let wrapped = pem::encode(&pem::Pem::new("PUBLIC KEY", data.to_vec()));
    let _ = public_key_fingerprint(&wrapped);
});
