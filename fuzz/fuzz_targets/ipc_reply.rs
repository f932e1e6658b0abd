#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| defender_edge::fuzz::ipc_reply(data));
