//! strata: a union filesystem in userspace. Read-only lower layers merged with one
//! writable upper layer, served over FUSE.

pub mod abi;
pub mod attr;
pub mod cmd;
pub mod config;
pub mod control;
pub mod copy_up;
pub mod dir;
pub mod dispatch;
pub mod durable;
pub mod file;
pub mod fs;
pub mod inode;
pub mod layer;
pub mod lookup;
pub mod mount;
pub mod override_stat;
pub mod readdir;
pub mod stack;
pub mod sys;
pub mod union;
pub mod uring;
pub mod whiteout;
