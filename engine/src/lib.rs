pub mod btree;
pub mod error;
pub mod format;
pub mod io;
