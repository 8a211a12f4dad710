//! Both programs of the object pass this kernel's verifier (needs root), and how much of its
//! budget they take: the instructions it processed for each (`verified_insns`, kernel 5.16 or
//! later), printed as `verifier: PROGRAM processed N instructions`, the margin later data-path
//! changes are judged by (`cargo xtask vm-test` reports it per kernel). A rejection fails with
//! `verifier: PROGRAM rejected: LINE`, the verifier's own reason.

use aya::programs::ProgramError;
use port_demux::{PROGRAM, PROGRAM_DEBUG};
use port_demux_common::action;
use port_demux_tests::test_run::Harness;

/// The line of a verifier log that says why it rejected the program: the last one before the
/// closing statistics (`verification time N usec`, `stack depth N`, `processed N insns ...`).
fn rejection(log: &str) -> &str {
    let lines: Vec<&str> = log
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let end = lines
        .iter()
        .position(|l| {
            ["verification time ", "stack depth ", "processed "]
                .iter()
                .any(|s| l.starts_with(s))
        })
        .unwrap_or(lines.len());
    lines[..end]
        .last()
        .copied()
        .unwrap_or("(empty verifier log)")
}

#[test]
fn both_programs_pass_the_verifier() {
    for program in [PROGRAM, PROGRAM_DEBUG] {
        let h = Harness::with_program(action::PASS, program).unwrap_or_else(|e| {
            if let Some(ProgramError::LoadError { verifier_log, .. }) = e.downcast_ref() {
                panic!(
                    "verifier: {program} rejected: {}",
                    rejection(&verifier_log.to_string())
                );
            }
            panic!("cannot load {program} (run the tests as root): {e:?}");
        });
        let processed = h
            .verified_instructions()
            .expect("the program's info")
            .expect("the kernel reports verified_insns (5.16 or later)");
        println!("verifier: {program} processed {processed} instructions");
    }
}

#[test]
fn rejection_is_the_line_before_the_statistics() {
    let log = "0: R1=ctx() R10=fp0\n; let x = ...\n\
               math between pkt pointer and register with unbounded min value is not allowed\n\
               verification time 11004 usec\nstack depth 0\n\
               processed 73 insns (limit 1000000) max_states_per_insn 0 total_states 4\n";
    assert_eq!(
        rejection(log),
        "math between pkt pointer and register with unbounded min value is not allowed"
    );
    assert_eq!(rejection("only a line\n"), "only a line");
    assert_eq!(rejection(""), "(empty verifier log)");
}
