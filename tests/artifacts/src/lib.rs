//! Paths of the test components (hostile fixtures and example plugins),
//! built from source by this crate's build script.

include!(concat!(env!("OUT_DIR"), "/artifacts.rs"));
