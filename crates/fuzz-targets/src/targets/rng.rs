//! `rng_device`: the virtio entropy device over fuzzed guest memory, driven by a
//! [`crate::driver`] script.

use devices::virtio::rng::Rng;

use crate::driver::{self, guest_memory, Driver, MEM_SIZE};
use crate::Input;

/// The `rng_device` target.
pub fn fuzz_rng_device(data: &[u8]) {
    let mut inp = Input::new(data);
    let (mask, size_exp) = driver::header(&mut inp);
    let mut d = Driver::new(Rng::new(), guest_memory(MEM_SIZE));
    d.feature_mask = mask;
    d.bring_up(size_exp);
    driver::run_script(&mut d, &mut inp, size_exp, |_, _, _| {}, 0);
    d.shutdown();
}
