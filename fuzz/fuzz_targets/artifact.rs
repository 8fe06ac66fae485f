//! Artifacts: bytes from whoever uploads one, and from the network on a device. Reading any
//! input must end in a header or an error, never a panic, and never take in more content than
//! the manifest declares. A manifest that parses must write itself out and parse back equal.
#![no_main]

use std::io::{self, Read};

use libfuzzer_sys::fuzz_target;
use tender_artifact::{Discard, Header, Manifest, Payload, Script, Sink, Trust, read, read_header};

struct Bounded;

impl Sink for Bounded {
    fn manifest(&mut self, _: &Header) -> io::Result<()> {
        Ok(())
    }
    fn script(&mut self, s: &Script, data: &mut dyn Read) -> io::Result<()> {
        let n = io::copy(data, &mut io::sink())?;
        assert!(n <= s.size);
        Ok(())
    }
    fn payload(&mut self, p: &Payload, data: &mut dyn Read) -> io::Result<()> {
        let n = io::copy(data, &mut io::sink())?;
        assert!(n <= p.size);
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(manifest) = Manifest::parse(data) {
        assert_eq!(Manifest::parse(&manifest.to_bytes()).as_ref(), Ok(&manifest));
    }
    let open = Trust {
        keys: &[],
        require_signature: false,
    };
    let _ = read(data, open, &mut Bounded);
    let _ = read(data, open, &mut Discard);
    let _ = read_header(data);
});
