#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| defender_edge::fuzz::proc_lines(data));
