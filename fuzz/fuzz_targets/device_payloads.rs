//! What devices send as JSON: telemetry and inventory payloads. Neither parser may panic;
//! an inventory that parses writes itself out canonically and parses back the same, and its
//! rows for the attribute index never exceed the indexed-text bound.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tender_core::Timestamp;
use tender_core::inventory::{MAX_INDEXED_TEXT, index_rows, parse_inventory};
use tender_core::telemetry::parse_payload;

fuzz_target!(|data: &[u8]| {
    let _ = parse_payload(data, Timestamp::from_unix_millis(1_790_000_000_000));
    if let Ok(inventory) = parse_inventory(data) {
        let json = inventory.to_json();
        let again = parse_inventory(json.as_bytes()).expect("canonical JSON parses");
        assert_eq!(again.to_json(), json);
        for (_, _, text, number) in index_rows(&inventory) {
            assert!(text.len() <= MAX_INDEXED_TEXT);
            assert!(number.is_none_or(f64::is_finite));
        }
    }
});
