//! The data-path fuzz run of `cargo xtask test`: at least 1 000 000 mutated packets
//! through `BPF_PROG_TEST_RUN`, every outcome checked by an independent oracle (see
//! `stickylb_tests::fuzz`). `STICKYLB_FUZZ_PACKETS`, `STICKYLB_FUZZ_SEED` and
//! `STICKYLB_FUZZ_THREADS` override the defaults; `cargo xtask fuzz` runs a long one in
//! release mode.

use stickylb_tests::fuzz::{self, Settings};

#[test]
fn fuzz_data_path() {
    let settings = Settings::from_env(1_000_000).expect("fuzz settings");
    let report = match fuzz::run(&settings) {
        Ok(r) => r,
        Err(e) => panic!("{e:#}"),
    };
    report.print();
    assert_eq!(report.packets, settings.packets);
    // The run must have exercised the interesting paths, not only garbage.
    if settings.packets >= 100_000 {
        assert!(
            report.forwarded * 10 >= report.packets,
            "less than 10% of the packets were forwarded: the corpus or the mutators are off"
        );
        assert!(
            report.encapsulated * 100 >= report.packets
                && report.too_big_answered > 0
                && report.too_big_dropped > 0,
            "the L3 DSR paths were hardly exercised: {} encapsulated, {} answered, {} dropped too big",
            report.encapsulated,
            report.too_big_answered,
            report.too_big_dropped
        );
        for class in [
            "service",
            "nat reply",
            "icmp error",
            "later fragment",
            "not ours",
        ] {
            assert!(
                report.classes.get(class).copied().unwrap_or(0) * 100 >= report.packets,
                "less than 1% of the packets were of class {class}"
            );
        }
    }
}
