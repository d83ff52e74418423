//! `frame_decode`: raw bytes into the frame decoder, with a round trip.

use bytes::Bytes;
use wharf_core::wire::{Frame, HEADER_LEN, Header};

/// Body limits the first input byte chooses between.
const LIMITS: [u32; 6] = [0, 16, 1024, 65536, 16 * 1024 * 1024, u32::MAX];

/// Most frames decoded from one input.
const MAX_FRAMES: usize = 256;

/// Decodes as many frames as `data[1..]` holds (the first byte picks the
/// body limit). For every frame that decodes:
/// - `Header::decode` of its 16 header bytes agrees with the frame and
///   re-encodes to the same 16 bytes;
/// - `Frame::to_bytes` succeeds and reproduces exactly the bytes consumed;
/// - decoding the re-encoded bytes gives an equal frame and consumes them all.
pub fn run(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else { return };
    let max_len = LIMITS[sel as usize % LIMITS.len()];

    // Header::decode alone, on the first 16 bytes, whatever follows.
    if rest.len() >= HEADER_LEN {
        let raw: &[u8; HEADER_LEN] = rest[..HEADER_LEN].try_into().unwrap();
        if let Ok(h) = Header::decode(raw, max_len) {
            assert!(h.len <= max_len, "header accepted a length above the limit: {h:?} > {max_len}");
            let mut out = Vec::with_capacity(HEADER_LEN);
            h.encode(&mut out);
            assert_eq!(&out[..], &raw[..], "header re-encoding differs");
        }
    }

    let mut buf = Bytes::copy_from_slice(rest);
    for _ in 0..MAX_FRAMES {
        let before = buf.clone();
        match Frame::decode_one(&mut buf, max_len) {
            Ok(Some(frame)) => {
                let consumed = before.len() - buf.len();
                let original = &before[..consumed];
                check_frame(&frame, original, max_len);
            }
            Ok(None) => {
                assert_eq!(before, buf, "decode_one consumed bytes without returning a frame");
                break;
            }
            Err(_) => break,
        }
    }
}

fn check_frame(frame: &Frame, original: &[u8], max_len: u32) {
    let raw: &[u8; HEADER_LEN] = original[..HEADER_LEN].try_into().unwrap();
    let header = Header::decode(raw, max_len).expect("decode_one accepted a header Header::decode refuses");
    assert_eq!(header.ty, frame.frame_type(), "frame type differs from its header");
    assert_eq!(header.len as usize, original.len() - HEADER_LEN, "frame length differs from its header");

    let encoded = match frame.to_bytes() {
        Ok(b) => b,
        Err(e) => panic!("a decoded frame does not re-encode: {e}\nframe: {frame:?}"),
    };
    assert_eq!(frame.body_len().unwrap() as usize, encoded.len() - HEADER_LEN, "body_len disagrees with encode");
    assert!(
        encoded[..] == original[..],
        "re-encoding differs from the input\n  frame: {frame:?}\n  input: {:02x?}\n  again: {:02x?}",
        original,
        &encoded[..]
    );
    let mut again = encoded.clone();
    match Frame::decode_one(&mut again, max_len) {
        Ok(Some(f2)) => {
            assert_eq!(&f2, frame, "decode(encode(frame)) != frame");
            assert!(again.is_empty(), "re-encoded frame left {} bytes behind", again.len());
        }
        other => panic!("re-encoded frame does not decode: {other:?}\nframe: {frame:?}"),
    }
}
