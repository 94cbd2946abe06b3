//! The JSON decoders of the events and settings topics: any bytes, under any
//! key, give an event or a DecodeError with a stable reason; never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use receiptd_wire::{decode_event, decode_setting, ContentType};

fuzz_target!(|data: &[u8]| {
    // The first line is the record key, the rest its payload.
    let (key, payload) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (Some(&data[..i]), &data[i + 1..]),
        None => (None, data),
    };
    for result in [decode_event(key, Some(payload), ContentType::Json).map(|_| ())] {
        if let Err(e) = result {
            assert!(!e.reason().is_empty());
        }
    }
    if let Err(e) = decode_setting(key, Some(payload), ContentType::Json) {
        assert!(!e.reason().is_empty());
    }
});
