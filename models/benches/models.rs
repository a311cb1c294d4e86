//! Parse + validate, diff and plan on generated models of 1,000, 10,000 and
//! 100,000 components (a bench binary that prints figures:
//! `cargo bench -p continuum-models`). Plain `serde_json` parsing of the same
//! text into an untyped value is the baseline: the cost of merely reading it.
//!
//! Two changes per size (`continuum_models::generate::mutate`): `1pct`, about
//! 1% of the components removed, changed (in place or not), moved or added — a
//! typical revision — and `10pct`, ten times as much. Models are as the
//! engines hold them: read from canonical JSON (the form revisions are stored
//! and sent in). Each figure is the median of repeated runs (at least 10, or
//! as many as fit in about 2 s) with the fastest and slowest beside it; the
//! time to free a result is left out. Under `cargo test --benches` every path
//! runs once on the two smaller sizes (smoke).

use std::hint::black_box;
use std::time::{Duration, Instant};

use continuum_models::diff::diff;
use continuum_models::generate::{generate, mutate};
use continuum_models::load::load_deployment_model;
use continuum_models::plan::{plan, plan_diff};

#[path = "../../benches/support/report.rs"]
mod report;

use report::{pick, Report, Summary};

/// Runs `f` repeatedly and summarises how long each run took; what `f`
/// returns is dropped outside the timing.
fn measure<T>(mut f: impl FnMut() -> T) -> Summary {
    let (budget, least) = pick((Duration::from_secs(2), 10), (Duration::ZERO, 1));
    // One run first, untimed: caches and the allocator warm up.
    drop(black_box(f()));
    let mut samples = Vec::new();
    let start = Instant::now();
    while samples.len() < least || start.elapsed() < budget {
        let t0 = Instant::now();
        let out = black_box(f());
        samples.push(t0.elapsed());
        drop(out);
    }
    Summary::of(&samples)
}

/// Whether `case` is measured: every case, or those containing one of the
/// words given after `--` (`cargo bench -p continuum-models -- "10000: diff"`).
fn wanted(case: &str) -> bool {
    let words: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    words.is_empty() || words.iter().any(|w| case.contains(w.as_str()))
}

fn row(report: &mut Report, case: &str, s: &Summary, baseline: Option<&str>) {
    let ms = report::ms(s.p50);
    match baseline {
        Some(b) => report.vs(case, "median", ms, "ms", s.n, b),
        None => report.add(case, "median", ms, "ms", s.n),
    }
    println!(
        "    (fastest {:.3} ms, slowest {:.3} ms)",
        report::ms(s.min),
        report::ms(s.max)
    );
}

fn main() {
    let mut report = Report::new("models");
    let sizes: &[usize] = pick(&[1_000, 10_000, 100_000], &[1_000, 10_000]);
    for &n in sizes {
        let words: Vec<String> = std::env::args()
            .skip(1)
            .filter(|a| !a.starts_with("--"))
            .collect();
        if !words.is_empty() && !words.iter().any(|w| w.starts_with(&format!("{n}:"))) {
            continue;
        }
        let generated = generate(42, n);
        let text =
            serde_json::to_string_pretty(&generated.clone().canonical()).expect("serializes");
        let a = load_deployment_model("a.json", &text).expect("valid");
        println!(
            "{n} components: {} links, {} KiB of JSON",
            a.links.len(),
            text.len() / 1024
        );
        let base = format!("{n}: serde_json parse (baseline)");
        let s = measure(|| serde_json::from_str::<serde_json::Value>(black_box(&text)).unwrap());
        row(&mut report, &base, &s, None);
        let case = format!("{n}: parse + validate");
        if wanted(&case) {
            let s = measure(|| load_deployment_model("bench.json", black_box(&text)).unwrap());
            row(&mut report, &case, &s, Some(&base));
        }
        for (name, rate) in [("1pct", 0.01), ("10pct", 0.1)] {
            let b_text = serde_json::to_string(&mutate(&generated, 43, rate).canonical())
                .expect("serializes");
            let b = load_deployment_model("b.json", &b_text).expect("valid");
            let d = diff(&a, &b);
            let p = plan(&a, &b);
            println!(
                "{n} components, change {name}: {} added, {} removed, {} changed, {} links added, {} removed; plan of {} steps",
                d.added.len(),
                d.removed.len(),
                d.changed.len(),
                d.links_added.len(),
                d.links_removed.len(),
                p.len()
            );
            let case = format!("{n}: diff, {name}");
            if wanted(&case) {
                let s = measure(|| diff(black_box(&a), black_box(&b)));
                row(&mut report, &case, &s, Some(&base));
            }
            let case = format!("{n}: plan from the diff, {name}");
            if wanted(&case) {
                let s = measure(|| plan_diff(black_box(&a), black_box(&b), black_box(&d)));
                row(&mut report, &case, &s, Some(&base));
            }
            let case = format!("{n}: diff + plan, {name}");
            if wanted(&case) {
                let s = measure(|| plan(black_box(&a), black_box(&b)));
                row(&mut report, &case, &s, Some(&base));
            }
        }
    }
}
