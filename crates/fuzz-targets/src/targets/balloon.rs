//! `balloon_device`: virtio-balloon over fuzzed guest memory: inflate and deflate PFN
//! arrays, statistics buffers, free page reports, with the host changing the target and
//! the statistics interval while it runs.

use devices::virtio::balloon::{Balloon, BalloonConfig};

use crate::driver::{self, guest_memory, Driver, MEM_SIZE};
use crate::Input;

/// The `balloon_device` target.
pub fn fuzz_balloon_device(data: &[u8]) {
    let mut inp = Input::new(data);
    let (mask, size_exp) = driver::header(&mut inp);
    let bits = inp.u8();
    let cfg = BalloonConfig {
        amount_mib: u32::from(bits >> 6),
        deflate_on_oom: bits & 1 != 0,
        stats_interval_s: u16::from(bits & 2 != 0),
        free_page_reporting: bits & 4 != 0,
    };
    let dev = Balloon::new("balloon-fuzz", cfg).expect("balloon");
    let control = dev.control();
    let mut d = Driver::new(dev, guest_memory(MEM_SIZE));
    d.feature_mask = mask;
    d.bring_up(size_exp);
    driver::run_script(
        &mut d,
        &mut inp,
        size_exp,
        |op, inp, d| {
            match op {
                0 => {
                    let _ = control.set_target_mib(u32::from(inp.u16()));
                }
                1 => {
                    let _ = control.set_stats_interval(u16::from(inp.u8()));
                }
                _ => {
                    let _ = control.stats();
                    let _ = (
                        control.actual_mib(),
                        control.target_pages(),
                        control.counts(),
                    );
                }
            }
            d.settle();
        },
        3,
    );
    d.shutdown();
}
