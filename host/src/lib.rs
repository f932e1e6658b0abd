//! defender-edge: an on-device security monitor for AWS IoT Greengrass.
//!
//! Data flows one way: [`collect`] reads `/proc` into a [`sample::Sample`],
//! [`plugin`] lets WebAssembly plugins filter and enrich it, [`detect`] judges
//! it against security profiles, [`report`] turns it into a validated Device
//! Defender report, and [`publish`] delivers reports and SIEM events.
//! [`pipeline`] is the one place those stages are called in order, for
//! `collect` and for [`run`], which adds the I/O around each step;
//! [`greengrass`] is the component's line to its nucleus. See
//! ARCHITECTURE.md for the invariants each module keeps.

pub mod backoff;
pub mod changes;
pub mod collect;
pub mod config;
pub mod detect;
pub mod fuzz;
pub mod greengrass;
pub mod health;
pub mod lenient;
pub mod output;
pub mod owners;
pub mod pipeline;
pub mod plugin;
pub mod publish;
pub mod report;
pub mod run;
pub mod sample;
pub mod signals;
pub mod state;
pub mod status;
