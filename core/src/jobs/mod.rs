//! Jobs next to their data: the pure parts of running a job's tasks over a
//! fileset version (issue 14). Grouping splits the version's files into the
//! groups tasks process, locality says which chunkserver holds the most of
//! a group's data-stripe bytes (where its task should run), and the commit
//! ledger makes each group's result count exactly once however attempts
//! finish, fail or crash. The Job controller (to come) drives these with
//! what it observes; nothing here does I/O.

pub mod commit;
pub mod grouping;
pub mod locality;
pub mod straggler;
