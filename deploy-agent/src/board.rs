//! The boards the agent knows: what their bootloader answers and how much
//! flash it lets a program have.

/// How a board is flashed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// STK500 version 1 (Arduino Uno, Nano, Duemilanove bootloaders): native.
    Stk500v1,
    /// Anything else: only with a tool template.
    Tool,
}

/// A board type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Board {
    /// Its name in models.
    pub name: &'static str,
    /// The MCU's signature bytes.
    pub signature: [u8; 3],
    /// The MCU as avrdude names it (`-p`).
    pub mcu: &'static str,
    /// Flash a program may use (the bootloader keeps the rest).
    pub flash_bytes: u32,
    /// The flash page, the unit of a write.
    pub page_bytes: usize,
    /// The bootloader's serial speed.
    pub baud: u32,
    /// How it is flashed.
    pub protocol: Protocol,
}

const M328P: [u8; 3] = [0x1e, 0x95, 0x0f];

/// Every board known, by name.
pub const BOARDS: &[Board] = &[
    Board {
        name: "uno",
        mcu: "m328p",
        signature: M328P,
        flash_bytes: 32_256,
        page_bytes: 128,
        baud: 115_200,
        protocol: Protocol::Stk500v1,
    },
    Board {
        name: "nano",
        mcu: "m328p",
        signature: M328P,
        flash_bytes: 32_256,
        page_bytes: 128,
        baud: 115_200,
        protocol: Protocol::Stk500v1,
    },
    // The older Arduino bootloader (ATmegaBOOT, 2 KiB).
    Board {
        name: "duemilanove",
        mcu: "m328p",
        signature: M328P,
        flash_bytes: 30_720,
        page_bytes: 128,
        baud: 57_600,
        protocol: Protocol::Stk500v1,
    },
    Board {
        name: "atmega328p",
        mcu: "m328p",
        signature: M328P,
        flash_bytes: 30_720,
        page_bytes: 128,
        baud: 115_200,
        protocol: Protocol::Stk500v1,
    },
    Board {
        name: "diecimila",
        mcu: "m168",
        signature: [0x1e, 0x94, 0x06],
        flash_bytes: 14_336,
        page_bytes: 128,
        baud: 19_200,
        protocol: Protocol::Stk500v1,
    },
    Board {
        name: "mega",
        mcu: "m2560",
        signature: [0x1e, 0x98, 0x01],
        flash_bytes: 253_952,
        page_bytes: 256,
        baud: 115_200,
        protocol: Protocol::Tool,
    },
    Board {
        name: "esp32",
        mcu: "esp32",
        signature: [0, 0, 0],
        flash_bytes: 4 << 20,
        page_bytes: 4096,
        baud: 460_800,
        protocol: Protocol::Tool,
    },
];

/// The board called `name`.
pub fn board(name: &str) -> Option<&'static Board> {
    BOARDS.iter().find(|b| b.name.eq_ignore_ascii_case(name))
}

/// The board names, for error messages.
pub fn names() -> Vec<&'static str> {
    BOARDS.iter().map(|b| b.name).collect()
}

/// Signature bytes as avrdude prints them.
pub fn show_signature(s: &[u8; 3]) -> String {
    format!("{:02x} {:02x} {:02x}", s[0], s[1], s[2])
}
