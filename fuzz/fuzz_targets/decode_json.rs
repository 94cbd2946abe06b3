//! The JSON decoders of the events and settings topics: any bytes, under any
//! key, give an event or a DecodeError with a stable reason; never a panic.
//! The fast path for the usual event shape decodes exactly as serde_json
//! alone does (`decode_event_reference`): the same event, or the same error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use receiptd_wire::{decode_event, decode_event_reference, decode_setting, ContentType};

fuzz_target!(|data: &[u8]| {
    // The first line is the record key, the rest its payload.
    let (key, payload) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (Some(&data[..i]), &data[i + 1..]),
        None => (None, data),
    };
    let decoded = decode_event(key, Some(payload), ContentType::Json);
    if let Err(e) = &decoded {
        assert!(!e.reason().is_empty());
    }
    let reference = decode_event_reference(key, Some(payload), ContentType::Json);
    assert_eq!(format!("{decoded:?}"), format!("{reference:?}"), "the fast path and serde disagree");
    if let Err(e) = decode_setting(key, Some(payload), ContentType::Json) {
        assert!(!e.reason().is_empty());
    }
});
