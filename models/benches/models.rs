//! Parse + validate, diff and plan on generated models of 1,000, 10,000 and
//! 100,000 components. `json_parse` (serde_json into an untyped value) is the
//! baseline: the cost of merely reading the same text.
//!
//! Two changes per size (`continuum_models::generate::mutate`): `1pct`, about 1% of
//! the components removed, changed (in place or not), moved or added — a typical
//! revision — and `10pct`, ten times as much. Models are as the engines hold them:
//! read from canonical JSON (the form revisions are stored and sent in). The time
//! to free a diff or plan is left out (`iter_with_large_drop`).

use std::hint::black_box;
use std::time::Duration;

use continuum_models::diff::diff;
use continuum_models::generate::{generate, mutate};
use continuum_models::load::load_deployment_model;
use continuum_models::plan::{plan, plan_diff};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

const SIZES: [usize; 3] = [1_000, 10_000, 100_000];

fn config(
    c: &mut Criterion,
    n: usize,
) -> criterion::BenchmarkGroup<'_, criterion::measurement::WallTime> {
    let mut g = c.benchmark_group(format!("{n}"));
    g.throughput(Throughput::Elements(n as u64));
    if n >= 100_000 {
        g.sample_size(10).measurement_time(Duration::from_secs(8));
    } else if n >= 10_000 {
        g.sample_size(20).measurement_time(Duration::from_secs(4));
    }
    g
}

fn benches(c: &mut Criterion) {
    for n in SIZES {
        let generated = generate(42, n);
        let text =
            serde_json::to_string_pretty(&generated.clone().canonical()).expect("serializes");
        let a = load_deployment_model("a.json", &text).expect("valid");
        eprintln!(
            "{n} components: {} links, {} KiB of JSON",
            a.links.len(),
            text.len() / 1024
        );
        let mut g = config(c, n);
        g.bench_function(BenchmarkId::new("json_parse", "baseline"), |bench| {
            bench.iter(|| {
                black_box(serde_json::from_str::<serde_json::Value>(black_box(&text)).unwrap())
            })
        });
        g.bench_function("parse_validate", |bench| {
            bench.iter(|| black_box(load_deployment_model("bench.json", black_box(&text)).unwrap()))
        });
        for (name, rate) in [("1pct", 0.01), ("10pct", 0.1)] {
            let b_text = serde_json::to_string(&mutate(&generated, 43, rate).canonical())
                .expect("serializes");
            let b = load_deployment_model("b.json", &b_text).expect("valid");
            let d = diff(&a, &b);
            let p = plan(&a, &b);
            eprintln!(
                "{n} components, change {name}: {} added, {} removed, {} changed, {} links added, {} removed; plan of {} steps",
                d.added.len(),
                d.removed.len(),
                d.changed.len(),
                d.links_added.len(),
                d.links_removed.len(),
                p.len()
            );
            g.bench_function(BenchmarkId::new("diff", name), |bench| {
                bench.iter_with_large_drop(|| diff(black_box(&a), black_box(&b)))
            });
            g.bench_function(BenchmarkId::new("plan_from_diff", name), |bench| {
                bench
                    .iter_with_large_drop(|| plan_diff(black_box(&a), black_box(&b), black_box(&d)))
            });
            g.bench_function(BenchmarkId::new("diff_plus_plan", name), |bench| {
                bench.iter_with_large_drop(|| plan(black_box(&a), black_box(&b)))
            });
        }
        g.finish();
    }
}

criterion_group!(models, benches);
criterion_main!(models);
