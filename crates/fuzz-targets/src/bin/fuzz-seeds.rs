//! Writes the seed corpus: `fuzz-seeds DIR` puts every seed in `DIR/<target>/<name>`
//! (`fuzz/corpus` in the repository).

use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    let dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "fuzz/corpus".into()),
    );
    for (target, name, bytes) in fuzz_targets::seeds::all() {
        let d = dir.join(target);
        std::fs::create_dir_all(&d)?;
        std::fs::write(d.join(format!("seed-{name}")), bytes)?;
    }
    Ok(())
}
