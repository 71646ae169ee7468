//! The integration tests: one binary (`cargo test --test it`), one module per area, and the
//! shared helpers in [`support`] (the fake Connect platform, the Data API server, MongoDB
//! provisioning, the in-process daemon harness and the one process-wide log capture).
//!
//! Every module's tests run concurrently in this one process: a test never touches the process
//! environment or the current directory, binds port 0 (or [`support::free_port`]), and picks its
//! own lines out of the captured logs by something only it logs.

mod cli;
mod config_reference;
mod connect;
mod connect_driver;
mod connect_faults;
mod connect_fidelity;
mod connect_proxy;
mod connect_rest;
mod data_api;
mod driver;
mod fuzz_protocol;
mod http;
mod leaks;
mod logship;
mod postgres;
mod sdk;
mod storage_driver_shutdown;
mod storage_http;
mod support;
