//! Bounded fuzzing of what the agent reads from outside: firmware images
//! (Intel HEX text, random and mutated from the example's real firmware) and
//! a bootloader's replies on the serial line (any bytes, cut anywhere). Any
//! input may be refused; none may panic. `CONTINUUM_FUZZ_CASES` sets the
//! number of cases (256 by default).

use std::collections::VecDeque;
use std::time::Duration;

use continuum_deploy_agent::image::Image;
use continuum_deploy_agent::serial::Link;
use continuum_deploy_agent::stk500::Bootloader;
use proptest::prelude::*;

fn cases() -> u32 {
    std::env::var("CONTINUUM_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

/// A line whose replies are whatever the fuzzer says, then silence.
struct Replies(VecDeque<u8>);

impl Link for Replies {
    fn send(&mut self, _bytes: &[u8]) -> std::io::Result<()> {
        Ok(())
    }
    fn receive(&mut self, buf: &mut [u8], _wait: Duration) -> std::io::Result<usize> {
        let n = buf.len().min(self.0.len()).min(7);
        for b in buf.iter_mut().take(n) {
            *b = self.0.pop_front().expect("counted");
        }
        Ok(n)
    }
    fn reset(&mut self) -> std::io::Result<()> {
        Ok(())
    }
    fn discard(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn example_hex() -> Vec<u8> {
    // The example's firmware when the build made it, else a small image.
    std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/smart-building/firmware/arduino-flow-v1.hex"
    ))
    .unwrap_or_else(|_| b":100000000C9434000C943E000C943E000C943E0082\n:00000001FF\n".to_vec())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_are_no_image_and_no_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let _ = Image::read(&bytes);
    }

    #[test]
    fn random_records_are_checked_not_trusted(records in prop::collection::vec("[0-9A-F]{0,60}", 1..12)) {
        let text: String = records.iter().map(|r| format!(":{r}\n")).collect();
        let _ = Image::read(text.as_bytes());
    }

    #[test]
    fn a_mutated_real_image_is_read_or_refused(
        edits in prop::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        cut in any::<usize>(),
    ) {
        let mut hex = example_hex();
        for (at, byte) in edits {
            let i = at % hex.len();
            hex[i] = byte;
        }
        hex.truncate(cut % (hex.len() + 1));
        if let Ok(image) = Image::read(&hex) {
            // What reads is bounded by the largest board.
            prop_assert!(image.data.len() <= 16 << 20);
        }
    }

    #[test]
    fn any_bootloader_reply_is_an_answer_or_an_error(replies in prop::collection::vec(any::<u8>(), 0..64)) {
        let mut link = Replies(replies.into());
        let mut b = Bootloader::new(&mut link);
        b.answer_within = Duration::from_millis(2);
        let _ = b.sync(2);
        let _ = b.enter();
        let _ = b.signature();
        let _ = b.read_page(0, 128);
        let _ = b.write_page(0x80, &[0xaa; 128]);
        let _ = b.leave();
    }
}
