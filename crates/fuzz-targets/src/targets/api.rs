//! `api_route`: the API's request router and JSON models (`api::route(method, path,
//! body)`), and what the VMM does with a routed configuration request before the boot
//! (the pure `vmm::resources` appliers on a fresh configuration, read back as the GET
//! handlers do). The HTTP request head is parsed by hyper (not ferrovm's code); the
//! server bounds it at 8 KiB.

use api::{route, ApiRequest, Method};
use vmm::resources;
use vmm::VmConfig;

use crate::Input;

const METHODS: [&str; 8] = [
    "GET", "PUT", "PATCH", "POST", "DELETE", "HEAD", "get", "PUTX",
];
const PATHS: [&str; 24] = [
    "/",
    "/version",
    "/machine-config",
    "/boot-source",
    "/drives/rootfs",
    "/drives/",
    "/entropy",
    "/network-interfaces/eth0",
    "/vsock",
    "/balloon",
    "/balloon/statistics",
    "/actions",
    "/vm",
    "/vm/config",
    "/vm/exits",
    "/snapshot/create",
    "/snapshot/load",
    "/logger",
    "/metrics",
    "/mmds",
    "//drives//x",
    "/drives/a/b",
    "/network-interfaces/",
    "",
];

/// The `api_route` target: a method and path chosen from the endpoints (or arbitrary),
/// then the body (arbitrary bytes, most often JSON-ish text).
pub fn fuzz_api_route(data: &[u8]) {
    let mut inp = Input::new(data);
    let m = inp.u8();
    let method = if m & 0x80 == 0 {
        METHODS[usize::from(m) % METHODS.len()].to_string()
    } else {
        String::from_utf8_lossy(inp.short_bytes()).into_owned()
    };
    let p = inp.u8();
    let path = if p & 0x80 == 0 {
        PATHS[usize::from(p) % PATHS.len()].to_string()
    } else {
        String::from_utf8_lossy(inp.short_bytes()).into_owned()
    };
    let body = inp.rest();
    let body = if m & 0x40 != 0 { None } else { Some(body) };
    let method = Method::parse(&method);
    let req = match route(method, &path, body) {
        Ok(r) => r,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    let _ = req.name();
    let mut config = VmConfig::empty();
    let applied = match &req {
        ApiRequest::PutMachineConfig(mc) => resources::set_machine(&mut config, mc),
        ApiRequest::PatchMachineConfig(u) => {
            let mc = u.apply(&resources::machine(&config));
            resources::set_machine(&mut config, &mc)
        }
        ApiRequest::PutBootSource(b) => resources::set_boot_source(&mut config, b),
        ApiRequest::PutDrive(d) => resources::put_drive(&mut config, d),
        ApiRequest::PutEntropy(e) => resources::set_entropy(&mut config, e),
        ApiRequest::PutNetworkInterface(n) => resources::put_net(&mut config, n),
        _ => Ok(()),
    };
    if applied.is_ok() {
        let _ = resources::machine(&config);
        let _ = resources::boot_source(&config);
        for i in 0..config.drives.len() {
            let _ = resources::drive(&config, i);
        }
        for i in 0..config.nets.len() {
            let _ = resources::net_interface(&config, i);
        }
        let full = resources::full_config(&config, None, None);
        let mut again = VmConfig::empty();
        let _ = resources::apply_full_config(&mut again, &full);
    }
}
