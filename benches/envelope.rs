//! Envelope seal/open at the seed's sizes: 100 B, 1 KB, 10 KB, 100 KB.
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use fieldseal::crypto::Keyring;
use serde_json::Value;

fn ring() -> Keyring {
    Keyring::from_raw_keys("k1", vec![("k1".to_string(), [7u8; 32])]).expect("ring")
}

fn envelope(c: &mut Criterion) {
    let ring = ring();
    let mut group = c.benchmark_group("envelope");
    for size in [100usize, 1_000, 10_000, 100_000] {
        let value = Value::String("x".repeat(size));
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::new("seal", size), &value, |b, v| {
            b.iter(|| ring.seal(std::hint::black_box(v), "ssn").expect("seal"))
        });
        let sealed = ring.seal(&value, "ssn").expect("seal");
        group.bench_with_input(BenchmarkId::new("open", size), &sealed, |b, s| {
            b.iter(|| {
                ring.open(std::hint::black_box(s), "ssn", None)
                    .expect("open")
            })
        });
    }
    group.finish();
}

criterion_group!(benches, envelope);
criterion_main!(benches);
