//! The state directory: small files that must survive restarts (report ids,
//! network counter baselines, the last publish time, the status file).
