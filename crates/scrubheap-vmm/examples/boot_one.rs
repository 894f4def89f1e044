//! Boots one guest on pool memory and one on fresh anonymous memory, and prints what
//! each found and cost: `cargo run --release -p scrubheap-vmm --example boot_one [MiB]`.

use scrubheap::DomId;
use scrubheap_host::guest::tag_of;
use scrubheap_host::instrument::PreemptRecorder;
use scrubheap_host::pool::{Pool, PoolConfig};
use scrubheap_host::GuestOps;
use scrubheap_vmm::vm::{AnonRam, Kvm, PoolRam, Ram};
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mib: u64 = std::env::args().nth(1).map_or(Ok(64), |a| a.parse())?;
    let kvm = Kvm::open()?;
    let pool = Pool::new(PoolConfig { memory_bytes: (mib + 8) << 20, ..Default::default() })?;
    let rec = PreemptRecorder::new(200_000);
    for round in 0..2 {
        let t0 = Instant::now();
        let (g, _) = pool.create_guest(DomId(1), mib << 20, &rec)?;
        println!("pool allocation {:.2} ms", t0.elapsed().as_secs_f64() * 1e3);
        let t = kvm.boot(Ram::Pool(PoolRam::new(&pool, g, &rec)), tag_of(DomId(1)), t0)?;
        println!("pool   #{round}: {:?}", t.stats);
        println!("  destroy {:.2} ms", t.destroy());
        let t0 = Instant::now();
        let t = kvm.boot(Ram::Anonymous(AnonRam::new(mib << 20)?), 0x5a, t0)?;
        println!("kernel #{round}: {:?}", t.stats);
        println!("  destroy {:.2} ms", t.destroy());
    }
    println!("tsc: {:?}", kvm.tsc());
    Ok(())
}
