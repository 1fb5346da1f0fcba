//! The process exit codes every subcommand uses (the product contract):
//! 0 ok, 1 runtime failure, 2 usage or config error.

pub const EXIT_OK: i32 = 0;
pub const EXIT_FAILURE: i32 = 1;
pub const EXIT_USAGE: i32 = 2;
