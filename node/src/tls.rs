//! The node's TLS is the services' shared setup.
pub use service::tls::*;
