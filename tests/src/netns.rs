//! Network namespaces and veth pairs for tests.
