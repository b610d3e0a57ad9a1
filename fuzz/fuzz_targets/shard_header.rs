//! Token shard files: the header and the length check, then reading every token back.
#![no_main]

use std::path::Path;

use hymba_datasets::shard::{HEADER_LEN, ShardHeader};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(header) = ShardHeader::check_file(data, Path::new("fuzz.bin")) else {
        return;
    };
    let width = header.dtype.bytes();
    assert_eq!(
        (data.len() - HEADER_LEN) as u64,
        header.count * width as u64
    );
    assert_eq!(
        ShardHeader::parse(&header.to_bytes(), Path::new("x")).ok(),
        Some(header)
    );
});
