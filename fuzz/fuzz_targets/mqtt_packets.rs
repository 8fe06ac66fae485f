//! The MQTT gateway's packet decoding path: arbitrary bytes as the first packets of a
//! connection (version detection and CONNECT), and after a valid MQTT 3.1.1 or 5 CONNECT (every
//! other packet type), then the topic rules on whatever topics came out.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tender_core::DeviceId;
use tender_server::mqtt::topic;
use tender_server::mqtt::wire::{Codec, Incoming};

const CONNECT_311: &[u8] = &[0x10, 0x0d, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 30, 0, 1, b'd'];
const CONNECT_5: &[u8] = &[0x10, 0x0e, 0, 4, b'M', b'Q', b'T', b'T', 5, 2, 0, 30, 0, 0, 1, b'd'];

fn drain(prefix: &[u8], data: &[u8]) {
    let device = DeviceId::from_uuid(uuid::Uuid::nil());
    let mut codec = Codec::new(64 * 1024);
    let mut buf = BytesMut::from(prefix);
    buf.extend_from_slice(data);
    for _ in 0..64 {
        match codec.decode(&mut buf) {
            Ok(Some(Incoming::Publish(p))) => {
                let _ = topic::classify_publish(device, &p.topic);
            }
            Ok(Some(Incoming::Subscribe { filters, .. })) => {
                for (f, _) in filters {
                    let _ = topic::check_subscription(device, &f);
                    let _ = topic::matches(&f, "tender/v1/x/commands/1");
                }
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    drain(&[], data);
    drain(CONNECT_311, data);
    drain(CONNECT_5, data);
});
