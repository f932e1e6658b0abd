//! defender-edge: an on-device security monitor for AWS IoT Greengrass.
//!
//! Data flows one way: [`collect`] reads `/proc` into a [`sample::Sample`],
//! [`plugin`] lets WebAssembly plugins filter and enrich it, [`detect`] judges
//! it against security profiles, [`report`] turns it into a validated Device
//! Defender report, and [`publish`] delivers reports and SIEM events. See
//! ARCHITECTURE.md for the invariants each module keeps.

pub mod collect;
pub mod config;
pub mod detect;
pub mod fuzz;
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
