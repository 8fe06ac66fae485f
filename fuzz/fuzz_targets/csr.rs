//! Certificate signing requests from devices: raw text through the PEM layer, and arbitrary
//! bytes wrapped as a PEM CSR so that the DER parser and signature check see them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tender_server::ca::parse_csr;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = parse_csr(text);
    }
    let wrapped = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", data.to_vec()));
    let _ = parse_csr(&wrapped);
});
