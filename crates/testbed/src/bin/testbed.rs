//! `testbed`: prepare the nested KVM testbed, run a script in L1, benchmark L2 boots.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use testbed::{run_boot_bench, BenchVmm, BootBench, Job, JobFile, Testbed};

#[derive(Parser)]
#[command(
    about = "Nested KVM testbed: a throwaway L1 Linux under QEMU TCG with SVM, giving a real /dev/kvm"
)]
struct Cli {
    /// Show the L1 console live (on stderr).
    #[arg(short, long, global = true)]
    verbose: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build (or verify) the cached L1 kernel and base initramfs; print their paths.
    Prepare,
    /// Run a shell script in L1; exits with the script's status.
    RunScript {
        /// The script (run by busybox sh in L1).
        script: PathBuf,
        /// Copy a host file into L1: HOST:L1PATH[:OCTAL_MODE] (repeatable).
        #[arg(long = "file", value_name = "HOST:L1PATH[:MODE]")]
        files: Vec<String>,
        /// Copy a host binary and its shared libraries: HOST:L1PATH (repeatable).
        #[arg(long = "bin", value_name = "HOST:L1PATH")]
        bins: Vec<String>,
        /// Add QEMU (+ libs + firmware) at /usr/bin/qemu-system-x86_64.
        #[arg(long)]
        qemu: bool,
        /// Add the L2 kernel (/l2/vmlinux, /l2/bzImage) and a default L2 initramfs (/l2/initrd.cpio).
        #[arg(long)]
        l2: bool,
        /// Job timeout in seconds.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
        /// L1 memory in MiB.
        #[arg(long, default_value_t = 2048)]
        mem: u32,
        /// L1 vCPUs.
        #[arg(long, default_value_t = testbed::DEFAULT_CPUS)]
        cpus: u32,
    },
    /// Boot L2 with QEMU microvm inside one L1, N times, and print the timings.
    BenchQemu {
        #[arg(short = 'n', long, default_value_t = 3)]
        iterations: u32,
        /// Also boot the bzImage (/l2/bzImage) as a second "VMM", to compare with the ELF.
        #[arg(long)]
        bzimage: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = if cli.verbose { "info" } else { "warn" };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| filter.into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(cli.cmd) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("testbed: {e}");
            ExitCode::from(2)
        }
    }
}

fn split_spec(spec: &str) -> Result<(String, String, Option<u32>), String> {
    let mut parts = spec.splitn(3, ':');
    let host = parts.next().unwrap_or_default().to_string();
    let l1 = parts
        .next()
        .ok_or_else(|| format!("{spec:?}: expected HOST:L1PATH"))?
        .to_string();
    let mode = parts
        .next()
        .map(|m| u32::from_str_radix(m, 8).map_err(|e| format!("{spec:?}: mode {m:?}: {e}")))
        .transpose()?;
    Ok((host, l1, mode))
}

fn run(cmd: Cmd) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let tb = Testbed::new()?;
    match cmd {
        Cmd::Prepare => {
            let b = tb.base();
            println!(
                "kernel:     {} ({})",
                tb.host().kernel_version,
                tb.host().vmlinuz.display()
            );
            println!("vmlinux:    {}", b.vmlinux.display());
            println!("base cpio:  {}", b.base_cpio.display());
            println!(
                "cache hit:  {} ({:.3} s)",
                b.cache_hit,
                tb.prepare_time().as_secs_f64()
            );
            println!("host vmx/svm: {}", testbed::host_has_hw_virt());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::RunScript {
            script,
            files,
            bins,
            qemu,
            l2,
            timeout,
            mem,
            cpus,
        } => {
            let text = std::fs::read_to_string(&script)
                .map_err(|e| format!("{}: {e}", script.display()))?;
            let mut job = Job::new(text)
                .timeout(Duration::from_secs(timeout))
                .mem_mib(mem)
                .cpus(cpus);
            for f in &files {
                let (host, l1, mode) = split_spec(f)?;
                job = job.file(JobFile::host(host, l1, mode.unwrap_or(0o755)));
            }
            for b in &bins {
                let (host, l1, _) = split_spec(b)?;
                job = job.files(testbed::binary_with_libs(host.as_ref(), &l1)?);
            }
            if qemu {
                job = job.files(tb.qemu_files()?);
            }
            if l2 {
                job = job.files(tb.l2_guest_files(&testbed::default_l2_init(), true)?);
            }
            let out = tb.run(&job)?;
            print!("{}", out.job_console());
            eprintln!(
                "testbed: status {} (L1 kvm: {}, L1 ready after {:.1} s, total {:.1} s)",
                out.status,
                out.l1_kvm,
                out.l1_boot.map_or(f64::NAN, |d| d.as_secs_f64()),
                out.wall.as_secs_f64()
            );
            Ok(ExitCode::from(u8::try_from(out.status).unwrap_or(1)))
        }
        Cmd::BenchQemu {
            iterations,
            bzimage,
        } => {
            let qemu = BenchVmm::qemu_microvm(&tb)?;
            let mut vmms = vec![qemu.clone()];
            if bzimage {
                vmms.push(BenchVmm {
                    name: "qemu-microvm-bzimage".into(),
                    command: testbed::qemu_l2_command(
                        testbed::L2_BZIMAGE,
                        testbed::L2_INITRD,
                        testbed::L2_MEM_MIB,
                    ),
                    files: Vec::new(),
                });
            }
            let mut bench = BootBench::new(vmms, iterations);
            bench.with_bzimage = bzimage;
            let report = run_boot_bench(&tb, &bench)?;
            print!("{}", report.summary());
            Ok(ExitCode::SUCCESS)
        }
    }
}
