//! What every benchmark shares (included by each with `#[path]`, so it uses
//! only `std`):
//!
//! * its **mode**: a full run under `cargo bench` (which passes `--bench`), a
//!   smoke run of a few iterations under `cargo test --benches`, so CI runs
//!   every bench, real parts included, and a broken bench fails it;
//! * honest **summaries** of samples: a tail of fewer than 100 samples is
//!   called the maximum, never p99;
//! * the **rows** `scripts/bench.sh` gathers into one table: each figure with
//!   its unit, the baseline it is compared with (measured in the same run)
//!   and the ratio. Rows go to `$CONTINUUM_BENCH_REPORT/<bench>.csv` when
//!   that is set, and are printed in any case.

#![allow(dead_code)]

use std::fmt::Write as _;
use std::time::Duration;

/// Whether this is a full run (`cargo bench`), not a smoke run.
pub fn full() -> bool {
    std::env::args().any(|a| a == "--bench")
}

/// `full` in a full run, `smoke` in a smoke run.
pub fn pick<T>(full: T, smoke: T) -> T {
    if self::full() {
        full
    } else {
        smoke
    }
}

/// A part the bench needs is missing: in CI (`CI=true`) that fails the run,
/// elsewhere the bench is skipped with the reason. Returns whether to go on.
pub fn require(what: &str, available: bool, bench: &str) -> bool {
    if available {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true but {what} is missing: the {bench} bench cannot run");
    }
    println!("skipped: {what} is missing");
    if let Some(dir) = report_dir() {
        let _ = std::fs::create_dir_all(&dir);
        let _ = std::fs::write(
            dir.join(format!("{bench}.skipped")),
            format!("{what} is missing\n"),
        );
    }
    false
}

/// Whether `program` runs (asked with `arg`, which it answers harmlessly).
pub fn installed(program: &str, arg: &str) -> bool {
    std::process::Command::new(program)
        .arg(arg)
        .output()
        .is_ok()
}

fn report_dir() -> Option<std::path::PathBuf> {
    std::env::var_os("CONTINUUM_BENCH_REPORT").map(Into::into)
}

/// Samples of one measured path, summarised.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    pub n: usize,
    pub min: Duration,
    pub p50: Duration,
    /// p99 when there are at least 100 samples, else the maximum.
    pub tail: Duration,
    pub max: Duration,
}

impl Summary {
    /// Summarises `samples` (at least one).
    pub fn of(samples: &[Duration]) -> Summary {
        assert!(!samples.is_empty(), "no samples");
        let mut v = samples.to_vec();
        v.sort();
        let at = |p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize];
        Summary {
            n: v.len(),
            min: v[0],
            p50: at(0.5),
            tail: if v.len() >= 100 {
                at(0.99)
            } else {
                v[v.len() - 1]
            },
            max: v[v.len() - 1],
        }
    }

    /// What the tail is: `p99` or `max`.
    pub fn tail_name(&self) -> &'static str {
        if self.n >= 100 {
            "p99"
        } else {
            "max"
        }
    }
}

/// Milliseconds, for printing.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// One figure.
#[derive(Debug, Clone)]
pub struct Row {
    pub case: String,
    pub metric: String,
    pub value: f64,
    pub unit: String,
    /// The case this one is compared with, and the ratio to it.
    pub baseline: Option<(String, f64)>,
    pub samples: usize,
}

/// The figures of one bench.
#[derive(Debug)]
pub struct Report {
    bench: String,
    rows: Vec<Row>,
}

impl Report {
    pub fn new(bench: &str) -> Report {
        println!(
            "== {bench} ({} run)",
            if full() {
                "full"
            } else {
                "smoke: a few iterations"
            }
        );
        Report {
            bench: bench.to_owned(),
            rows: Vec::new(),
        }
    }

    /// Records `value` of `metric` for `case`.
    pub fn add(&mut self, case: &str, metric: &str, value: f64, unit: &str, samples: usize) {
        self.push(case, metric, value, unit, samples, None);
    }

    /// Records `value` and its ratio to the same metric of case `baseline`,
    /// recorded before.
    pub fn vs(
        &mut self,
        case: &str,
        metric: &str,
        value: f64,
        unit: &str,
        samples: usize,
        baseline: &str,
    ) {
        let base = self
            .rows
            .iter()
            .find(|r| r.case == baseline && r.metric == metric)
            .unwrap_or_else(|| panic!("no baseline `{baseline}` for {metric}"))
            .value;
        let ratio = if base == 0.0 { f64::NAN } else { value / base };
        self.push(
            case,
            metric,
            value,
            unit,
            samples,
            Some((baseline.to_owned(), ratio)),
        );
    }

    /// Records the p50 and the tail of `s` in milliseconds, each against the
    /// same figure of `baseline` when given.
    pub fn latency(&mut self, case: &str, s: &Summary, baseline: Option<&str>) {
        for (metric, d) in [("p50", s.p50), (s.tail_name(), s.tail)] {
            match baseline {
                Some(b) if self.rows.iter().any(|r| r.case == b && r.metric == metric) => {
                    self.vs(case, metric, ms(d), "ms", s.n, b)
                }
                _ => self.add(case, metric, ms(d), "ms", s.n),
            }
        }
    }

    fn push(
        &mut self,
        case: &str,
        metric: &str,
        value: f64,
        unit: &str,
        samples: usize,
        baseline: Option<(String, f64)>,
    ) {
        let mut line = format!("  {case:<56} {metric:>6} {value:>12.3} {unit:<6}");
        if samples > 1 {
            let _ = write!(line, " n={samples:<6}");
        }
        if let Some((b, r)) = &baseline {
            let _ = write!(line, " {r:.2}x {b}");
        }
        println!("{line}");
        self.rows.push(Row {
            case: case.to_owned(),
            metric: metric.to_owned(),
            value,
            unit: unit.to_owned(),
            baseline,
            samples,
        });
    }

    /// The rows as CSV (no header): bench, case, metric, value, unit,
    /// baseline, ratio, samples.
    pub fn csv(&self) -> String {
        let q = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
        let mut out = String::new();
        for r in &self.rows {
            let (b, ratio) = match &r.baseline {
                Some((b, ratio)) => (q(b), format!("{ratio:.4}")),
                None => (String::new(), String::new()),
            };
            let _ = writeln!(
                out,
                "{},{},{},{},{},{},{},{}",
                q(&self.bench),
                q(&r.case),
                q(&r.metric),
                r.value,
                q(&r.unit),
                b,
                ratio,
                r.samples
            );
        }
        out
    }
}

impl Drop for Report {
    /// Appends the rows to the report directory (several runs of one bench
    /// add up; the report takes their median).
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        let Some(dir) = report_dir() else {
            return;
        };
        use std::io::Write as _;
        std::fs::create_dir_all(&dir).expect("the report directory");
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(format!("{}.csv", self.bench)))
            .expect("the bench's report file");
        f.write_all(self.csv().as_bytes())
            .expect("writing the bench's report");
    }
}
