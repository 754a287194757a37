//! Standard output that may be closed early (`tessera ls -R fs | head`): a
//! write to a closed pipe ends the program quietly, with success, instead of
//! a panic or an error, as the classic Unix tools behave.

use std::fmt;
use std::io::{self, Write};

/// Writes `args` to stdout (see [`crate::outln`]).
pub fn write(args: fmt::Arguments<'_>, newline: bool) {
    let mut out = io::stdout().lock();
    let r = if newline { writeln!(out, "{args}") } else { write!(out, "{args}").and_then(|()| out.flush()) };
    if let Err(e) = r {
        exit_if_closed(&e);
        // Any other failure to write the output is worth a word on stderr.
        eprintln!("error: writing to stdout: {e}");
        std::process::exit(1);
    }
}

/// Ends the program quietly if `e` says stdout's reader went away.
pub fn exit_if_closed(e: &io::Error) {
    if e.kind() == io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
}

/// `println!` for command output: quiet exit on a closed stdout.
#[macro_export]
macro_rules! outln {
    () => { $crate::output::write(format_args!(""), true) };
    ($($arg:tt)*) => { $crate::output::write(format_args!($($arg)*), true) };
}

/// `print!` for command output (flushed): quiet exit on a closed stdout.
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => { $crate::output::write(format_args!($($arg)*), false) };
}
