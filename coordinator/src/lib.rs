//! The coordinator's combination step: national estimates and 95% intervals from node answers.
//! (The researcher API, mTLS fan-out and run store arrive with the federation issue.)

pub mod combine;
