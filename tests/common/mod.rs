//! Shared helpers of the integration tests: the golden vectors made by bitsandbytes.

#![allow(dead_code)]

pub mod golden;
