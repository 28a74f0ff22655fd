//! The inbound path, from raw AMQP content-header properties and body to the result documents
//! and messages the worker would write: `worker::fuzzing::inbound` says what it covers.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = worker::fuzzing::inbound(data);
});
