//! The library half of the `jobward` binary: the configuration file and its validation, so
//! that tools (the fuzz targets, `jobward check`) read a configuration exactly as `serve` does.

pub mod config;
