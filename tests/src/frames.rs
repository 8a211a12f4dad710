//! Crafted Ethernet frames.
