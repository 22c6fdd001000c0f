//! Refcount entries of any width (refcount_order 0..=6) inside a refcount block.
//!
//! Entries narrower than a byte are packed starting at the least significant bit; entries of
//! 16 bits and more are big-endian.

/// Reads entry `idx` of a refcount block with the given order.
pub fn get(block: &[u8], order: u32, idx: usize) -> u64 {
    match order {
        0..=2 => {
            let bits = 1usize << order;
            let per_byte = 8 / bits;
            let byte = block[idx / per_byte];
            let shift = (idx % per_byte) * bits;
            u64::from((byte >> shift) & ((1u16 << bits) - 1) as u8)
        }
        3 => u64::from(block[idx]),
        _ => {
            let n = 1usize << (order - 3);
            let mut v = 0u64;
            for &b in &block[idx * n..idx * n + n] {
                v = (v << 8) | u64::from(b);
            }
            v
        }
    }
}

/// Writes entry `idx`; `val` must not exceed [`max`].
pub fn set(block: &mut [u8], order: u32, idx: usize, val: u64) {
    match order {
        0..=2 => {
            let bits = 1usize << order;
            let per_byte = 8 / bits;
            let shift = (idx % per_byte) * bits;
            let mask = (((1u16 << bits) - 1) as u8) << shift;
            let b = &mut block[idx / per_byte];
            *b = (*b & !mask) | (((val as u8) << shift) & mask);
        }
        3 => block[idx] = val as u8,
        _ => {
            let n = 1usize << (order - 3);
            let bytes = val.to_be_bytes();
            block[idx * n..idx * n + n].copy_from_slice(&bytes[8 - n..]);
        }
    }
}

/// Largest refcount representable with the given order.
pub fn max(order: u32) -> u64 {
    if order >= 6 {
        u64::MAX
    } else {
        (1u64 << (1u32 << order)) - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_every_order() {
        for order in 0..=6u32 {
            let bits = 1usize << order;
            let entries = 64usize;
            let mut block = vec![0u8; entries * bits / 8];
            for i in 0..entries {
                set(&mut block, order, i, (i as u64 * 7) & max(order));
            }
            for i in 0..entries {
                assert_eq!(
                    get(&block, order, i),
                    (i as u64 * 7) & max(order),
                    "order {order} idx {i}"
                );
            }
        }
    }

    #[test]
    fn sub_byte_packing_is_lsb_first() {
        let mut block = vec![0u8; 1];
        set(&mut block, 0, 0, 1);
        assert_eq!(block[0], 1);
        set(&mut block, 1, 1, 3);
        assert_eq!(block[0], 0b1101);
        let mut b16 = vec![0u8; 4];
        set(&mut b16, 4, 1, 0x0102);
        assert_eq!(b16, [0, 0, 1, 2]);
    }
}
