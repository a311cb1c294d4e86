//! STK500 version 1, the protocol of the Arduino Uno, Nano and Duemilanove
//! bootloaders: sync, signature, page writes and reads, each command answered
//! by `INSYNC … OK`.

use std::time::{Duration, Instant};

use crate::serial::Link;

const OK: u8 = 0x10;
const INSYNC: u8 = 0x14;
const NOSYNC: u8 = 0x15;
const EOP: u8 = 0x20;
const GET_SYNC: u8 = 0x30;
const ENTER_PROGMODE: u8 = 0x50;
const LEAVE_PROGMODE: u8 = 0x51;
const LOAD_ADDRESS: u8 = 0x55;
const PROG_PAGE: u8 = 0x64;
const READ_PAGE: u8 = 0x74;
const READ_SIGN: u8 = 0x75;

/// What went wrong talking to a bootloader.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Stk500Error {
    /// Nothing (or not enough) came back in time.
    #[error("no answer from the bootloader within {0:?}{1}")]
    NoAnswer(Duration, String),
    /// The bootloader answered out of step.
    #[error("the bootloader answered out of sync ({0})")]
    OutOfSync(String),
    /// The port failed.
    #[error("serial port: {0}")]
    Io(String),
}

fn io(e: std::io::Error) -> Stk500Error {
    Stk500Error::Io(e.to_string())
}

/// A bootloader on a link.
pub struct Bootloader<'l> {
    link: &'l mut dyn Link,
    /// How long one command may take to be answered.
    pub answer_within: Duration,
}

impl std::fmt::Debug for Bootloader<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bootloader")
            .field("answer_within", &self.answer_within)
            .finish_non_exhaustive()
    }
}

impl<'l> Bootloader<'l> {
    /// Talks over `link`.
    pub fn new(link: &'l mut dyn Link) -> Bootloader<'l> {
        Bootloader {
            link,
            answer_within: Duration::from_millis(500),
        }
    }

    /// Reads exactly `n` bytes within the answer time.
    fn read_exact(&mut self, n: usize, what: &str) -> Result<Vec<u8>, Stk500Error> {
        let deadline = Instant::now() + self.answer_within;
        let mut out = Vec::with_capacity(n);
        let mut buf = [0u8; 512];
        while out.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let got = if out.is_empty() {
                    String::new()
                } else {
                    format!(" (got {} of {n} bytes)", out.len())
                };
                return Err(Stk500Error::NoAnswer(
                    self.answer_within,
                    format!(" to {what}{got}"),
                ));
            }
            let want = (n - out.len()).min(buf.len());
            let k = self.link.receive(&mut buf[..want], left).map_err(io)?;
            out.extend_from_slice(&buf[..k]);
        }
        Ok(out)
    }

    /// Sends `command` and reads `INSYNC`, `body` bytes, `OK`; returns the body.
    fn command(&mut self, command: &[u8], body: usize, what: &str) -> Result<Vec<u8>, Stk500Error> {
        self.link.send(command).map_err(io)?;
        let reply = self.read_exact(body + 2, what)?;
        match (reply[0], reply[body + 1]) {
            (INSYNC, OK) => Ok(reply[1..=body].to_vec()),
            (NOSYNC, _) => Err(Stk500Error::OutOfSync(format!("{what}: NOSYNC"))),
            (a, b) => Err(Stk500Error::OutOfSync(format!(
                "{what}: {a:#04x} … {b:#04x} instead of INSYNC … OK"
            ))),
        }
    }

    /// Gets in sync: up to `tries` attempts, throwing away what came before.
    pub fn sync(&mut self, tries: u32) -> Result<(), Stk500Error> {
        let mut last = None;
        for _ in 0..tries.max(1) {
            self.link.discard().map_err(io)?;
            match self.command(&[GET_SYNC, EOP], 0, "a sync request") {
                Ok(_) => {
                    // A bootloader may answer every sync sent while it woke up.
                    self.link.discard().map_err(io)?;
                    return Ok(());
                }
                Err(e @ Stk500Error::Io(_)) => return Err(e),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| Stk500Error::NoAnswer(self.answer_within, String::new())))
    }

    /// Enters programming mode.
    pub fn enter(&mut self) -> Result<(), Stk500Error> {
        self.command(&[ENTER_PROGMODE, EOP], 0, "enter programming mode")
            .map(drop)
    }

    /// Leaves programming mode: the bootloader starts the program.
    pub fn leave(&mut self) -> Result<(), Stk500Error> {
        self.command(&[LEAVE_PROGMODE, EOP], 0, "leave programming mode")
            .map(drop)
    }

    /// The MCU's signature bytes.
    pub fn signature(&mut self) -> Result<[u8; 3], Stk500Error> {
        let s = self.command(&[READ_SIGN, EOP], 3, "read the signature")?;
        Ok([s[0], s[1], s[2]])
    }

    fn load_address(&mut self, byte_address: u32) -> Result<(), Stk500Error> {
        let word = byte_address / 2;
        self.command(
            &[
                LOAD_ADDRESS,
                (word & 0xff) as u8,
                ((word >> 8) & 0xff) as u8,
                EOP,
            ],
            0,
            "load an address",
        )
        .map(drop)
    }

    /// Writes one flash page at `address`.
    pub fn write_page(&mut self, address: u32, page: &[u8]) -> Result<(), Stk500Error> {
        self.load_address(address)?;
        let len = page.len() as u16;
        let mut cmd = Vec::with_capacity(page.len() + 5);
        cmd.extend_from_slice(&[PROG_PAGE, (len >> 8) as u8, (len & 0xff) as u8, b'F']);
        cmd.extend_from_slice(page);
        cmd.push(EOP);
        self.command(&cmd, 0, &format!("write the page at {address:#06x}"))
            .map(drop)
    }

    /// Reads `len` bytes of flash at `address`.
    pub fn read_page(&mut self, address: u32, len: usize) -> Result<Vec<u8>, Stk500Error> {
        self.load_address(address)?;
        let l = len as u16;
        self.command(
            &[READ_PAGE, (l >> 8) as u8, (l & 0xff) as u8, b'F', EOP],
            len,
            &format!("read the page at {address:#06x}"),
        )
    }
}

#[cfg(test)]
pub(crate) mod fake {
    //! A bootloader in memory, for the protocol's logic.
    use super::*;
    use std::collections::VecDeque;

    #[derive(Debug)]
    pub struct FakeBoard {
        pub flash: Vec<u8>,
        pub signature: [u8; 3],
        pub stuck: Option<usize>,
        pub silent: bool,
        pub out: VecDeque<u8>,
        pub input: Vec<u8>,
        address: usize,
        pub started: bool,
    }

    impl FakeBoard {
        pub fn new(size: usize) -> FakeBoard {
            FakeBoard {
                flash: vec![0xff; size],
                signature: [0x1e, 0x95, 0x0f],
                stuck: None,
                silent: false,
                out: VecDeque::new(),
                input: Vec::new(),
                address: 0,
                started: false,
            }
        }

        fn reply(&mut self, body: &[u8]) {
            self.out.push_back(INSYNC);
            self.out.extend(body);
            self.out.push_back(OK);
        }

        /// Handles every complete command in the input.
        fn run(&mut self) {
            loop {
                let need = match self.input.first() {
                    None => return,
                    Some(&PROG_PAGE) if self.input.len() >= 3 => {
                        5 + usize::from(u16::from_be_bytes([self.input[1], self.input[2]]))
                    }
                    Some(&PROG_PAGE) => return,
                    Some(&LOAD_ADDRESS) => 4,
                    Some(&READ_PAGE) => 5,
                    Some(_) => 2,
                };
                if self.input.len() < need {
                    return;
                }
                let cmd: Vec<u8> = self.input.drain(..need).collect();
                match cmd[0] {
                    GET_SYNC | ENTER_PROGMODE => self.reply(&[]),
                    LEAVE_PROGMODE => {
                        self.reply(&[]);
                        self.started = true;
                    }
                    READ_SIGN => {
                        let s = self.signature;
                        self.reply(&s);
                    }
                    LOAD_ADDRESS => {
                        self.address = usize::from(u16::from_le_bytes([cmd[1], cmd[2]])) * 2;
                        self.reply(&[]);
                    }
                    PROG_PAGE => {
                        let data = &cmd[4..cmd.len() - 1];
                        let a = self.address;
                        self.flash[a..a + data.len()].copy_from_slice(data);
                        if let Some(s) = self.stuck {
                            self.flash[s] = 0xff;
                        }
                        self.reply(&[]);
                    }
                    READ_PAGE => {
                        let len = usize::from(u16::from_be_bytes([cmd[1], cmd[2]]));
                        let a = self.address;
                        let data = self.flash[a..a + len].to_vec();
                        self.reply(&data);
                    }
                    _ => self.out.push_back(NOSYNC),
                }
            }
        }
    }

    impl Link for FakeBoard {
        fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
            if !self.silent {
                self.input.extend_from_slice(bytes);
                self.run();
            }
            Ok(())
        }

        fn receive(&mut self, buf: &mut [u8], _wait: Duration) -> std::io::Result<usize> {
            let n = buf.len().min(self.out.len());
            for b in buf.iter_mut().take(n) {
                *b = self.out.pop_front().unwrap_or(0);
            }
            Ok(n)
        }

        fn reset(&mut self) -> std::io::Result<()> {
            self.started = false;
            Ok(())
        }

        fn discard(&mut self) -> std::io::Result<()> {
            self.out.clear();
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::FakeBoard;
    use super::*;

    #[test]
    fn writes_and_reads_pages_and_the_signature() {
        let mut board = FakeBoard::new(1024);
        let mut b = Bootloader::new(&mut board);
        b.sync(3).unwrap();
        b.enter().unwrap();
        assert_eq!(b.signature().unwrap(), [0x1e, 0x95, 0x0f]);
        let page: Vec<u8> = (0..128).map(|i| i as u8).collect();
        b.write_page(256, &page).unwrap();
        assert_eq!(b.read_page(256, 128).unwrap(), page);
        b.leave().unwrap();
        assert!(board.started);
        assert_eq!(&board.flash[256..384], page.as_slice());
    }

    #[test]
    fn a_silent_board_is_no_answer() {
        let mut board = FakeBoard::new(1024);
        board.silent = true;
        let mut b = Bootloader::new(&mut board);
        b.answer_within = Duration::from_millis(1);
        assert!(matches!(b.sync(2), Err(Stk500Error::NoAnswer(..))));
    }
}
