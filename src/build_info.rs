//! What was built: version, git commit and compiler (set by `build.rs`).

/// The crate version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Short git commit of a release build, `+dirty` if the tree had local
/// changes; `unknown` for debug builds and builds outside a git checkout.
pub const GIT_COMMIT: &str = env!("FIELDSEAL_BUILD_COMMIT");
/// `rustc --version` of the compiler that built it.
pub const RUSTC: &str = env!("FIELDSEAL_RUSTC_VERSION");
