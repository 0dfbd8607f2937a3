//! The field transform on realistic documents, each beside the floor:
//! plain serde_json parse + serialize of the same bytes.
//!
//! - a 2 KB user object with 4 configured fields;
//! - a 64 KB document with 200 matched fields in arrays.
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use fieldseal::config::Config;
use fieldseal::crypto::Keyring;
use fieldseal::proxy::{decrypt_body, encrypt_body};
use serde_json::Value;

mod fixtures;
use fixtures::{list_doc, load_doc, user_doc, CONFIG};

fn floor(raw: &[u8]) -> Vec<u8> {
    let v: Value = serde_json::from_slice(raw).expect("json");
    serde_json::to_vec(&v).expect("serialize")
}

fn transform(c: &mut Criterion) {
    let config = Config::from_yaml(CONFIG, std::path::Path::new("/bench.yaml")).expect("config");
    let ring = Keyring::from_raw_keys("k1", vec![("k1".to_string(), [9u8; 32])]).expect("ring");
    for (name, route_name, raw) in [
        (
            "2KB_4_fields",
            "user",
            serde_json::to_vec(&user_doc()).expect("doc"),
        ),
        // bench/load.sh's request: 106 short members around the same 4 fields.
        ("2KB_load_request", "user", load_doc()),
        (
            "64KB_200_fields",
            "list",
            serde_json::to_vec(&list_doc()).expect("doc"),
        ),
    ] {
        let route = config.routes.by_name(route_name).expect("route");
        let (sealed, report) = encrypt_body(&raw, route, &ring).expect("encrypt");
        assert!(
            report.encrypted == 4 || report.encrypted == 200,
            "{name}: {} fields",
            report.encrypted
        );
        let sealed = bytes::Bytes::from(sealed);

        let mut group = c.benchmark_group(format!("transform/{name}"));
        group.throughput(Throughput::Bytes(raw.len() as u64));
        group.bench_function("floor: serde_json parse+serialize", |b| {
            b.iter(|| floor(std::hint::black_box(&raw)))
        });
        group.bench_function("encrypt request", |b| {
            b.iter(|| encrypt_body(std::hint::black_box(&raw), route, &ring).expect("encrypt"))
        });
        group.bench_function("floor: parse+serialize sealed", |b| {
            b.iter(|| floor(std::hint::black_box(&sealed)))
        });
        group.bench_function("decrypt response", |b| {
            b.iter(|| {
                let (out, _) = decrypt_body(std::hint::black_box(sealed.clone()), route, &ring);
                out.expect("decrypt")
            })
        });
        group.finish();
    }
}

criterion_group!(benches, transform);

/// Selection alone, for the crate choice in the README: our engine's walk
/// over the bytes (every selected location found), serde_json_path
/// (compiled path, located nodes turned into JSON pointers and replaced),
/// jsonpath-rust (no mutable references: query the paths, then look each
/// one up again by path and replace it).
fn select_and_replace(c: &mut Criterion) {
    use fieldseal::transform::{locations, FieldPath, FieldRule};
    use jsonpath_rust::query::queryable::Queryable;
    use jsonpath_rust::JsonPath as _;

    let paths = [
        "$.ssn",
        "$.card.number",
        "$.contacts[*].phone",
        "$..card.number",
    ];
    let doc = user_doc();
    let rules: Vec<FieldRule> = paths
        .iter()
        .map(|p| FieldRule {
            path: FieldPath::parse(p).expect("path"),
            context: None,
        })
        .collect();
    let compiled: Vec<serde_json_path::JsonPath> = paths
        .iter()
        .map(|p| serde_json_path::JsonPath::parse(p).expect("path"))
        .collect();
    let marker = Value::String("sealed".into());

    let mut group = c.benchmark_group("select_and_replace/2KB_4_paths");
    let raw = serde_json::to_vec(&doc).expect("doc");
    group.bench_function("fieldseal walk over the bytes", |b| {
        b.iter(|| locations(std::hint::black_box(&raw), &rules).expect("select"))
    });
    group.bench_function("serde_json_path + pointer_mut", |b| {
        b.iter_batched_ref(
            || doc.clone(),
            |d| {
                for p in &compiled {
                    let pointers: Vec<String> = p
                        .query_located(d)
                        .locations()
                        .map(|l| l.to_json_pointer())
                        .collect();
                    for ptr in pointers {
                        if let Some(v) = d.pointer_mut(&ptr) {
                            *v = marker.clone();
                        }
                    }
                }
            },
            criterion::BatchSize::SmallInput,
        )
    });
    group.bench_function("jsonpath-rust + reference_mut", |b| {
        b.iter_batched_ref(
            || doc.clone(),
            |d| {
                for p in paths {
                    let found = d.query_only_path(p).unwrap_or_default();
                    for path in found {
                        if let Some(v) = d.reference_mut(path) {
                            *v = marker.clone();
                        }
                    }
                }
            },
            criterion::BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(selection, select_and_replace);
criterion_main!(benches, selection);
