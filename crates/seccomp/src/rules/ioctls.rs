//! The `ioctl` requests ferrovm issues, by the encoding of the Linux UAPI headers
//! (`_IO`, `_IOR`, `_IOW`, `_IOWR` with the sizes of the kvm-bindings structures).

use std::mem::size_of;

use kvm_bindings as kb;

const NONE: u64 = 0;
const WRITE: u64 = 1;
const READ: u64 = 2;

const fn ioc(dir: u64, ty: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | (ty << 8) | nr
}

const KVMIO: u64 = 0xAE;
const fn kvm_io(nr: u64) -> u64 {
    ioc(NONE, KVMIO, nr, 0)
}
const fn kvm_ior(nr: u64, size: usize) -> u64 {
    ioc(READ, KVMIO, nr, size)
}
const fn kvm_iow(nr: u64, size: usize) -> u64 {
    ioc(WRITE, KVMIO, nr, size)
}
const fn kvm_iowr(nr: u64, size: usize) -> u64 {
    ioc(READ | WRITE, KVMIO, nr, size)
}

// /dev/kvm
pub const KVM_GET_API_VERSION: u64 = kvm_io(0x00);
pub const KVM_CREATE_VM: u64 = kvm_io(0x01);
pub const KVM_GET_MSR_INDEX_LIST: u64 = kvm_iowr(0x02, size_of::<kb::kvm_msr_list>());
pub const KVM_CHECK_EXTENSION: u64 = kvm_io(0x03);
pub const KVM_GET_VCPU_MMAP_SIZE: u64 = kvm_io(0x04);
pub const KVM_GET_SUPPORTED_CPUID: u64 = kvm_iowr(0x05, size_of::<kb::kvm_cpuid2>());
pub const KVM_GET_MSR_FEATURE_INDEX_LIST: u64 = kvm_iowr(0x0a, size_of::<kb::kvm_msr_list>());

// VM
pub const KVM_CREATE_VCPU: u64 = kvm_io(0x41);
pub const KVM_GET_DIRTY_LOG: u64 = kvm_iow(0x42, size_of::<kb::kvm_dirty_log>());
pub const KVM_SET_USER_MEMORY_REGION: u64 =
    kvm_iow(0x46, size_of::<kb::kvm_userspace_memory_region>());
pub const KVM_SET_TSS_ADDR: u64 = kvm_io(0x47);
pub const KVM_SET_IDENTITY_MAP_ADDR: u64 = kvm_iow(0x48, size_of::<u64>());
pub const KVM_CREATE_IRQCHIP: u64 = kvm_io(0x60);
pub const KVM_IRQ_LINE: u64 = kvm_iow(0x61, size_of::<kb::kvm_irq_level>());
pub const KVM_GET_IRQCHIP: u64 = kvm_iowr(0x62, size_of::<kb::kvm_irqchip>());
pub const KVM_SET_IRQCHIP: u64 = kvm_ior(0x63, size_of::<kb::kvm_irqchip>());
pub const KVM_IRQ_LINE_STATUS: u64 = kvm_iowr(0x67, size_of::<kb::kvm_irq_level>());
pub const KVM_SET_GSI_ROUTING: u64 = kvm_iow(0x6a, size_of::<kb::kvm_irq_routing>());
pub const KVM_IRQFD: u64 = kvm_iow(0x76, size_of::<kb::kvm_irqfd>());
pub const KVM_CREATE_PIT2: u64 = kvm_iow(0x77, size_of::<kb::kvm_pit_config>());
pub const KVM_IOEVENTFD: u64 = kvm_iow(0x79, size_of::<kb::kvm_ioeventfd>());
pub const KVM_SET_CLOCK: u64 = kvm_iow(0x7b, size_of::<kb::kvm_clock_data>());
pub const KVM_GET_CLOCK: u64 = kvm_ior(0x7c, size_of::<kb::kvm_clock_data>());
pub const KVM_GET_PIT2: u64 = kvm_ior(0x9f, size_of::<kb::kvm_pit_state2>());
pub const KVM_SET_PIT2: u64 = kvm_iow(0xa0, size_of::<kb::kvm_pit_state2>());
pub const KVM_ENABLE_CAP: u64 = kvm_iow(0xa3, size_of::<kb::kvm_enable_cap>());

// vCPU
pub const KVM_RUN: u64 = kvm_io(0x80);
pub const KVM_GET_REGS: u64 = kvm_ior(0x81, size_of::<kb::kvm_regs>());
pub const KVM_SET_REGS: u64 = kvm_iow(0x82, size_of::<kb::kvm_regs>());
pub const KVM_GET_SREGS: u64 = kvm_ior(0x83, size_of::<kb::kvm_sregs>());
pub const KVM_SET_SREGS: u64 = kvm_iow(0x84, size_of::<kb::kvm_sregs>());
pub const KVM_TRANSLATE: u64 = kvm_iowr(0x85, size_of::<kb::kvm_translation>());
pub const KVM_GET_MSRS: u64 = kvm_iowr(0x88, size_of::<kb::kvm_msrs>());
pub const KVM_SET_MSRS: u64 = kvm_iow(0x89, size_of::<kb::kvm_msrs>());
pub const KVM_GET_FPU: u64 = kvm_ior(0x8c, size_of::<kb::kvm_fpu>());
pub const KVM_SET_FPU: u64 = kvm_iow(0x8d, size_of::<kb::kvm_fpu>());
pub const KVM_GET_LAPIC: u64 = kvm_ior(0x8e, size_of::<kb::kvm_lapic_state>());
pub const KVM_SET_LAPIC: u64 = kvm_iow(0x8f, size_of::<kb::kvm_lapic_state>());
pub const KVM_SET_CPUID2: u64 = kvm_iow(0x90, size_of::<kb::kvm_cpuid2>());
pub const KVM_GET_CPUID2: u64 = kvm_iowr(0x91, size_of::<kb::kvm_cpuid2>());
pub const KVM_GET_MP_STATE: u64 = kvm_ior(0x98, size_of::<kb::kvm_mp_state>());
pub const KVM_SET_MP_STATE: u64 = kvm_iow(0x99, size_of::<kb::kvm_mp_state>());
pub const KVM_GET_VCPU_EVENTS: u64 = kvm_ior(0x9f, size_of::<kb::kvm_vcpu_events>());
pub const KVM_SET_VCPU_EVENTS: u64 = kvm_iow(0xa0, size_of::<kb::kvm_vcpu_events>());
pub const KVM_GET_DEBUGREGS: u64 = kvm_ior(0xa1, size_of::<kb::kvm_debugregs>());
pub const KVM_SET_DEBUGREGS: u64 = kvm_iow(0xa2, size_of::<kb::kvm_debugregs>());
pub const KVM_SET_TSC_KHZ: u64 = kvm_io(0xa2);
pub const KVM_GET_TSC_KHZ: u64 = kvm_io(0xa3);
pub const KVM_GET_XSAVE: u64 = kvm_ior(0xa4, size_of::<kb::kvm_xsave>());
pub const KVM_SET_XSAVE: u64 = kvm_iow(0xa5, size_of::<kb::kvm_xsave>());
pub const KVM_GET_XCRS: u64 = kvm_ior(0xa6, size_of::<kb::kvm_xcrs>());
pub const KVM_SET_XCRS: u64 = kvm_iow(0xa7, size_of::<kb::kvm_xcrs>());
pub const KVM_KVMCLOCK_CTRL: u64 = kvm_io(0xad);
pub const KVM_SET_DEVICE_ATTR: u64 = kvm_iow(0xe1, size_of::<kb::kvm_device_attr>());
pub const KVM_GET_DEVICE_ATTR: u64 = kvm_iow(0xe2, size_of::<kb::kvm_device_attr>());
pub const KVM_HAS_DEVICE_ATTR: u64 = kvm_iow(0xe3, size_of::<kb::kvm_device_attr>());

/// What a vCPU thread issues: the run loop, a paused vCPU's state for a snapshot, the
/// register dump of a failed vCPU.
pub const VCPU_RUN: &[u64] = &[
    KVM_RUN,
    KVM_GET_REGS,
    KVM_GET_SREGS,
    KVM_TRANSLATE,
    KVM_GET_MSRS,
    KVM_GET_FPU,
    KVM_GET_LAPIC,
    KVM_GET_CPUID2,
    KVM_GET_MP_STATE,
    KVM_GET_VCPU_EVENTS,
    KVM_GET_DEBUGREGS,
    KVM_GET_TSC_KHZ,
    KVM_GET_XSAVE,
    KVM_GET_XCRS,
    KVM_KVMCLOCK_CTRL,
    // The TSC offset of a snapshot (KVM_VCPU_TSC_CTRL).
    KVM_HAS_DEVICE_ATTR,
    KVM_GET_DEVICE_ATTR,
];

/// What building, restoring and snapshotting a VM issues (the main thread: reboots,
/// snapshots, restores).
pub const KVM_BUILD: &[u64] = &[
    KVM_GET_API_VERSION,
    KVM_CREATE_VM,
    KVM_GET_MSR_INDEX_LIST,
    KVM_CHECK_EXTENSION,
    KVM_GET_VCPU_MMAP_SIZE,
    KVM_GET_SUPPORTED_CPUID,
    KVM_GET_MSR_FEATURE_INDEX_LIST,
    KVM_CREATE_VCPU,
    KVM_GET_DIRTY_LOG,
    KVM_SET_USER_MEMORY_REGION,
    KVM_SET_TSS_ADDR,
    KVM_SET_IDENTITY_MAP_ADDR,
    KVM_CREATE_IRQCHIP,
    KVM_IRQ_LINE,
    KVM_GET_IRQCHIP,
    KVM_SET_IRQCHIP,
    KVM_IRQ_LINE_STATUS,
    KVM_SET_GSI_ROUTING,
    KVM_IRQFD,
    KVM_CREATE_PIT2,
    KVM_IOEVENTFD,
    KVM_SET_CLOCK,
    KVM_GET_CLOCK,
    KVM_GET_PIT2,
    KVM_SET_PIT2,
    KVM_ENABLE_CAP,
    KVM_SET_REGS,
    KVM_GET_SREGS,
    KVM_SET_SREGS,
    KVM_SET_MSRS,
    KVM_SET_FPU,
    KVM_SET_LAPIC,
    KVM_GET_LAPIC,
    KVM_SET_CPUID2,
    KVM_SET_MP_STATE,
    KVM_SET_VCPU_EVENTS,
    KVM_SET_DEBUGREGS,
    KVM_SET_TSC_KHZ,
    KVM_GET_TSC_KHZ,
    KVM_SET_XSAVE,
    KVM_SET_XCRS,
    // A restored vCPU's TSC offset (KVM_VCPU_TSC_CTRL).
    KVM_HAS_DEVICE_ATTR,
    KVM_SET_DEVICE_ATTR,
];

/// An irqfd and ioeventfd registration (a device activated at run time).
pub const KVM_EVENTFDS: &[u64] = &[KVM_IRQFD, KVM_IOEVENTFD];

// tun/tap (`'T'`) and network interface requests.
const fn tun_iow(nr: u64) -> u64 {
    ioc(WRITE, b'T' as u64, nr, size_of::<libc::c_int>())
}
const fn tun_ior(nr: u64) -> u64 {
    ioc(READ, b'T' as u64, nr, size_of::<libc::c_int>())
}
pub const TUNSETIFF: u64 = tun_iow(202);
pub const TUNGETIFF: u64 = tun_ior(210);
pub const TUNSETOFFLOAD: u64 = tun_iow(208);
pub const TUNGETVNETHDRSZ: u64 = tun_ior(215);
pub const TUNSETVNETHDRSZ: u64 = tun_iow(216);
pub const TUNSETQUEUE: u64 = tun_iow(217);
pub const SIOCGIFFLAGS: u64 = 0x8913;
pub const SIOCSIFFLAGS: u64 = 0x8914;
pub const SIOCGIFMTU: u64 = 0x8921;
pub const SIOCSIFMTU: u64 = 0x8922;
pub const SIOCGIFINDEX: u64 = 0x8933;

/// Opening and configuring a tap (a device built again on a reboot) and setting its
/// offloads when the driver accepts features.
pub const TAP: &[u64] = &[
    TUNSETIFF,
    TUNGETIFF,
    TUNSETOFFLOAD,
    TUNGETVNETHDRSZ,
    TUNSETVNETHDRSZ,
    TUNSETQUEUE,
    SIOCGIFFLAGS,
    SIOCSIFFLAGS,
    SIOCGIFMTU,
    SIOCSIFMTU,
    SIOCGIFINDEX,
];

// vhost (`0xAF`).
const VHOST: u64 = 0xAF;
const fn vhost_io(nr: u64) -> u64 {
    ioc(NONE, VHOST, nr, 0)
}
const fn vhost_ior(nr: u64, size: usize) -> u64 {
    ioc(READ, VHOST, nr, size)
}
const fn vhost_iow(nr: u64, size: usize) -> u64 {
    ioc(WRITE, VHOST, nr, size)
}
const fn vhost_iowr(nr: u64, size: usize) -> u64 {
    ioc(READ | WRITE, VHOST, nr, size)
}
/// `struct vhost_vring_state` and `struct vhost_vring_file`: two 32-bit fields.
const VRING_STATE: usize = 8;
/// `struct vhost_vring_addr`.
const VRING_ADDR: usize = 40;
/// `struct vhost_memory` without its regions.
const VHOST_MEMORY: usize = 8;
pub const VHOST_GET_FEATURES: u64 = vhost_ior(0x00, 8);
pub const VHOST_SET_FEATURES: u64 = vhost_iow(0x00, 8);
pub const VHOST_SET_OWNER: u64 = vhost_io(0x01);
pub const VHOST_RESET_OWNER: u64 = vhost_io(0x02);
pub const VHOST_SET_MEM_TABLE: u64 = vhost_iow(0x03, VHOST_MEMORY);
pub const VHOST_SET_LOG_BASE: u64 = vhost_iow(0x04, 8);
pub const VHOST_SET_LOG_FD: u64 = vhost_iow(0x07, 4);
pub const VHOST_SET_VRING_NUM: u64 = vhost_iow(0x10, VRING_STATE);
pub const VHOST_SET_VRING_ADDR: u64 = vhost_iow(0x11, VRING_ADDR);
pub const VHOST_SET_VRING_BASE: u64 = vhost_iow(0x12, VRING_STATE);
pub const VHOST_GET_VRING_BASE: u64 = vhost_iowr(0x12, VRING_STATE);
pub const VHOST_SET_VRING_KICK: u64 = vhost_iow(0x20, VRING_STATE);
pub const VHOST_SET_VRING_CALL: u64 = vhost_iow(0x21, VRING_STATE);
pub const VHOST_SET_VRING_ERR: u64 = vhost_iow(0x22, VRING_STATE);
pub const VHOST_NET_SET_BACKEND: u64 = vhost_iow(0x30, VRING_STATE);

/// Starting, stopping and re-pairing vhost-net queues.
pub const VHOST_NET: &[u64] = &[
    VHOST_GET_FEATURES,
    VHOST_SET_FEATURES,
    VHOST_SET_OWNER,
    VHOST_RESET_OWNER,
    VHOST_SET_MEM_TABLE,
    VHOST_SET_LOG_BASE,
    VHOST_SET_LOG_FD,
    VHOST_SET_VRING_NUM,
    VHOST_SET_VRING_ADDR,
    VHOST_SET_VRING_BASE,
    VHOST_GET_VRING_BASE,
    VHOST_SET_VRING_KICK,
    VHOST_SET_VRING_CALL,
    VHOST_SET_VRING_ERR,
    VHOST_NET_SET_BACKEND,
];

/// libc's request type (`c_ulong` with glibc, `c_int` with musl) as a number.
#[allow(clippy::unnecessary_cast)]
const fn req(r: libc::Ioctl) -> u64 {
    r as u64
}

/// Terminal and non-blocking requests on the host console and sockets.
pub const FIONBIO: u64 = req(libc::FIONBIO);
pub const FIOCLEX: u64 = req(libc::FIOCLEX);
pub const TCGETS: u64 = req(libc::TCGETS);
pub const TCSETS: u64 = req(libc::TCSETS);
pub const TCSETSW: u64 = req(libc::TCSETSW);
pub const TCSETSF: u64 = req(libc::TCSETSF);
pub const TIOCGWINSZ: u64 = req(libc::TIOCGWINSZ);
pub const TERMINAL: &[u64] = &[TCGETS, TCSETS, TCSETSW, TCSETSF, TIOCGWINSZ];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_match_the_kernel_headers() {
        // Values as strace and the headers show them.
        assert_eq!(KVM_RUN, 0xae80);
        assert_eq!(KVM_CREATE_VM, 0xae01);
        assert_eq!(KVM_GET_REGS, 0x8090_ae81);
        assert_eq!(KVM_SET_USER_MEMORY_REGION, 0x4020_ae46);
        assert_eq!(KVM_IRQFD, 0x4020_ae76);
        assert_eq!(KVM_IOEVENTFD, 0x4040_ae79);
        assert_eq!(KVM_GET_XSAVE, 0x9000_aea4);
        assert_eq!(KVM_GET_MSRS, 0xc008_ae88);
        assert_eq!(KVM_GET_SUPPORTED_CPUID, 0xc008_ae05);
        assert_eq!(KVM_GET_LAPIC, 0x8400_ae8e);
        assert_eq!(TUNSETIFF, 0x4004_54ca);
        assert_eq!(TUNSETOFFLOAD, 0x4004_54d0);
        assert_eq!(TUNSETVNETHDRSZ, 0x4004_54d8);
        assert_eq!(VHOST_SET_OWNER, 0xaf01);
        assert_eq!(VHOST_SET_VRING_ADDR, 0x4028_af11);
        assert_eq!(VHOST_GET_VRING_BASE, 0xc008_af12);
        assert_eq!(VHOST_NET_SET_BACKEND, 0x4008_af30);
    }
}
