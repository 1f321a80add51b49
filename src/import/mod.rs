//! Importers: turn public traces and price histories (the producers' side)
//! into prescale events, and read and write events files (recorded topics).
//! They read files; the decision core never does.

pub mod alibaba;
pub mod eventbridge;
pub mod events_file;
pub mod prices;
pub mod settings;
pub mod swf;

use std::io::{BufRead, BufReader, Read};
use std::path::Path;

/// Open a possibly compressed file (gzip or zstd, detected by magic bytes, not
/// by name) as a buffered reader.
pub fn open_maybe_compressed(path: &Path) -> std::io::Result<Box<dyn BufRead>> {
    let mut f = std::fs::File::open(path)?;
    let mut magic = [0u8; 4];
    let n = f.read(&mut magic)?;
    drop(f);
    let f = std::fs::File::open(path)?;
    Ok(if n >= 2 && magic[..2] == [0x1f, 0x8b] {
        Box::new(BufReader::new(flate2::read::MultiGzDecoder::new(f)))
    } else if n >= 4 && magic == [0x28, 0xb5, 0x2f, 0xfd] {
        Box::new(BufReader::new(zstd::stream::read::Decoder::new(f)?))
    } else {
        Box::new(BufReader::new(f))
    })
}
