//! Jobs next to their data: the pure parts of running a job's tasks over a
//! fileset version (issue 14). Grouping splits the version's files into the
//! groups tasks process, locality says which chunkserver holds the most of
//! a group's data-stripe bytes, the plan puts the two together (each group
//! with the server its task should run next to), the commit ledger makes
//! each group's result count exactly once however attempts finish, fail or
//! crash, and the straggler decisions say which tasks get accelerated reads
//! or backups. The Job controller (to come) drives these with what it
//! observes; nothing here does I/O.

pub mod commit;
pub mod grouping;
pub mod locality;
pub mod plan;
pub mod scheduler;
pub mod straggler;
