//! The bincode decoders: any bytes give an event or a DecodeError, never a
//! panic or an allocation beyond the decode limit. A decoded event encodes
//! back to bytes that decode to the same event.
#![no_main]

use libfuzzer_sys::fuzz_target;
use receiptd_wire::{decode_event, decode_setting, encode_event_bincode, ContentType};

fuzz_target!(|data: &[u8]| {
    let (key, payload) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (Some(&data[..i]), &data[i + 1..]),
        None => (None, data),
    };
    if let Ok(event) = decode_event(key, Some(payload), ContentType::Bincode) {
        let again = encode_event_bincode(&event);
        let back = decode_event(key, Some(&again), ContentType::Bincode).expect("a decoded event round-trips");
        assert_eq!(back, event);
    }
    let _ = decode_setting(key, Some(payload), ContentType::Bincode);
});
