//! fieldseal: a TLS-terminating reverse proxy that encrypts configured JSON
//! fields before they reach a legacy backend and decrypts them on the way back.
#![forbid(unsafe_code)]

pub mod audit;
pub mod crypto;
pub mod fields;
