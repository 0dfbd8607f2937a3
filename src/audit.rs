//! Tamper-evident audit log (STUB: being written).
