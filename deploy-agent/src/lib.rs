//! The deploy agent: the gateway's delegate on the host wired to a leaf device
//! It will flash firmware over serial (`resources.flash` in the model),
//! verifies it and reports. The flashers arrive with the leaf-device issue.

#![warn(missing_docs)]

pub use continuum_models as models;
