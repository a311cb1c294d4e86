//! The bridge between the gateway's local broker and the global bus (DESIGN §4).
//! So far: the durable outbox both directions go through.

pub mod outbox;
