//! Exit codes shared by every binary, after BSD's sysexits.h, so scripts and service managers
//! can tell a typo from a busy port.

/// Command-line usage error (EX_USAGE).
pub const USAGE: i32 = 64;
/// A service could not be had: a listener failed to bind (EX_UNAVAILABLE).
pub const UNAVAILABLE: i32 = 69;
/// A bug or an unexpected failure inside taphost (EX_SOFTWARE).
pub const INTERNAL: i32 = 70;
/// Not allowed: a privilege the process lacks (EX_NOPERM).
pub const NOPERM: i32 = 77;
/// A tap file or plugin configuration is wrong (EX_CONFIG).
pub const CONFIG: i32 = 78;
