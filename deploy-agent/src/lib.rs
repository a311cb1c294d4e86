//! The deploy agent: it runs on the host a leaf device is wired to and flashes
//! firmware onto the device (natively over STK500v1, the protocol of Arduino
//! bootloaders, or with a tool such as avrdude), verifies it, confirms that it
//! runs or rolls it back, and carries the device's serial lines to MQTT.

pub mod board;
pub mod flash;
pub mod image;
pub mod job;
pub mod proxy;
pub mod serial;
pub mod service;
pub mod sign;
pub mod sim;
pub mod state;
pub mod stk500;
pub mod tool;
