//! The virtio-mmio transport (virtio 1.2, section 4.2, register layout version 2).
