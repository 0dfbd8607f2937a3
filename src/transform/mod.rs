//! The field transform: field rules, the look-alike check and the
//! streaming walk, moved here unchanged.

pub mod path;
pub mod shape;
pub mod stream;
