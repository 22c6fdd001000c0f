//! Runs in L1: prints where process PID's resident memory is, as one line
//! `@@FP-PROBE TAG key=value ...` (see `footprint::smaps::Breakdown::to_words`) followed,
//! with `--detail`, by one line per resident mapping outside guest RAM.
//!
//! Usage: footprint-probe TAG PID GUEST_MIB [--detail]

fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let (Some(tag), Some(pid), Some(mib)) = (
        a.first(),
        a.get(1).and_then(|p| p.parse::<u32>().ok()),
        a.get(2).and_then(|m| m.parse::<u64>().ok()),
    ) else {
        eprintln!("usage: footprint-probe TAG PID GUEST_MIB [--detail]");
        std::process::exit(2);
    };
    match footprint::smaps::probe(pid, mib << 20) {
        Ok((maps, classes, b)) => {
            println!("@@FP-PROBE {tag} {}", b.to_words());
            if a.iter().any(|x| x == "--detail") {
                for l in footprint::smaps::detail(&maps, &classes).lines() {
                    println!("@@FP-MAP {tag} {l}");
                }
            }
        }
        Err(e) => {
            println!("@@FP-PROBE {tag} error={e}");
            std::process::exit(1);
        }
    }
}
