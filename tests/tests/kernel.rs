//! What the running kernel's verifier says of the program (needs root): this build's object
//! must load on every kernel the project supports, and an object a verifier rejects must be
//! refused in one line with the whole log kept in a file.
//!
//! `cargo xtask vm-test` runs these on Debian's 6.1 and 6.12 kernels too, where main's layout-v2
//! object (`tests/fixtures/port-demux-v2.o`, commit 5e68fb7, built before the verifier fix)
//! is rejected: it added the byte-swapped IPv4 total length to a packet pointer, and those
//! verifiers forget a value's range after a byte swap.

use std::path::Path;

use port_demux::{EBPF_OBJECT, Error, PROGRAM, PROGRAM_DEBUG, kernel};

/// The layout-v2 object of main at 5e68fb7.
fn v2_object() -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/port-demux-v2.o");
    std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// (major, minor) of the running kernel.
fn release() -> (u32, u32) {
    let text = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
    let mut parts = text.trim().split(['.', '-', '+']);
    let mut next = || {
        parts
            .next()
            .and_then(|p| p.parse().ok())
            .expect("a numeric release")
    };
    (next(), next())
}

#[test]
fn this_build_verifies() {
    let name = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
    let name = name.trim();
    for program in [PROGRAM, PROGRAM_DEBUG] {
        let insns = kernel::verify(EBPF_OBJECT, program, None).unwrap_or_else(|e| {
            // Read by `cargo xtask vm-test` too.
            println!("verifier: {program} rejected: {e}");
            panic!("{program} on {name}: {e}")
        });
        // One line per program, read by `cargo xtask vm-test`.
        println!(
            "verifier: {program} processed {} instructions",
            insns.map_or_else(|| "unknown".to_owned(), |n| n.to_string())
        );
        if release() >= (5, 16) {
            assert!(insns.is_some_and(|n| n > 0), "{program}: {insns:?}");
        }
    }
}

#[test]
fn a_rejected_object_is_one_line_with_the_log_in_a_file() {
    let dir = std::env::temp_dir().join(format!("pd-verifier-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let log = dir.join("verifier.log");
    let result = kernel::verify(&v2_object(), PROGRAM, Some(&log));
    let (major, minor) = release();
    println!("v2 object on {major}.{minor}: {result:?}");
    match result {
        Err(e @ Error::Verifier { .. }) => {
            let text = e.to_string();
            assert!(!text.contains('\n'), "one line: {text}");
            assert!(
                text.contains("math between pkt pointer and register with unbounded min value"),
                "the verifier's reason: {text}"
            );
            assert!(text.contains(&log.display().to_string()), "{text}");
            let saved = std::fs::read_to_string(&log).expect("the log file");
            assert!(saved.lines().count() > 10, "the whole log: {saved}");
        }
        Err(e) => panic!("not a verifier rejection: {e}"),
        Ok(_) => {
            // Only verifiers that keep a range through a byte swap take it: not 6.1 or 6.12
            // (the kernels of the VM test), and the 6.18 this project is developed on does.
            assert!(
                (major, minor) > (6, 12),
                "{major}.{minor} accepted the v2 object, which 6.1 and 6.12 reject"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
