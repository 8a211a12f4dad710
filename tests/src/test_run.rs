//! The XDP program loaded (unattached, unpinned) for BPF_PROG_TEST_RUN.
