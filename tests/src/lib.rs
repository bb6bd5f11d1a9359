//! Support code for wslnet's integration tests: namespaces and processes (`netns`), the
//! black-hole lab (`lab`), the real agent started with typed options (`agent`), the real
//! clients (`clients`), a real Prometheus scraping the agent (`prometheus`), crafted packets
//! (`packets`) and `BPF_PROG_TEST_RUN` (`testrun`).
//!
//! Every test builds its own network in namespaces it creates and removes; nothing touches the
//! host's interfaces.
pub mod agent;
pub mod clients;
pub mod fuzz;
pub mod lab;
pub mod netns;
pub mod packets;
pub mod prometheus;
pub mod testrun;
