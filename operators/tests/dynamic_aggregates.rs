//! Property test: the dynamic aggregates evaluator against a plain transcription of what
//! Gnocchi's numpy code does (`processor.aggregated` and `operations.py`), on random series
//! with gaps, every fill mode and overlap, every reduction across and rolling, arithmetic.

use std::collections::BTreeSet;

use meterflow_operators::aggregate::dynamic::{evaluate, Answer, Fetched, Fill, Node, Window};
use proptest::prelude::*;
use serde_json::json;

const G: i64 = 300_000_000_000;
const REDUCTIONS: [&str; 8] = ["mean", "median", "std", "var", "min", "max", "sum", "count"];

#[derive(Clone, Debug)]
enum Op {
    /// `(aggregate R (metric all))`, `rate:` when the flag says.
    Aggregate(usize, bool),
    /// `(rolling R W (metric all))`.
    Rolling(usize, usize),
    /// `(- (metric m0) (metric m1))`.
    Difference,
    /// `(* (metric all) C)`.
    Scale(f64),
}

fn reduce(name: &str, values: &[f64]) -> f64 {
    let v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    let n = v.len() as f64;
    if v.is_empty() {
        return if name == "sum" || name == "count" {
            0.0
        } else {
            f64::NAN
        };
    }
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
    match name {
        "mean" => mean,
        "sum" => v.iter().sum(),
        "count" => n,
        "min" => v.iter().copied().fold(f64::INFINITY, f64::min),
        "max" => v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        "var" => var,
        "std" => var.sqrt(),
        "median" => {
            let mut s = v.clone();
            s.sort_by(f64::total_cmp);
            let m = s.len() / 2;
            if s.len() % 2 == 1 {
                s[m]
            } else {
                (s[m - 1] + s[m]) / 2.0
            }
        }
        _ => unreachable!(),
    }
}

/// What Gnocchi answers: `Err` for a 400, else one series or one per metric.
fn plain(series: &[Vec<(i64, f64)>], op: &Op, fill: Fill) -> Result<Answer, ()> {
    let mut times: Vec<i64> = series
        .iter()
        .flatten()
        .map(|p| p.0)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let filler = if let Fill::Value(v) = fill {
        v
    } else {
        f64::NAN
    };
    // grid[col][row]
    let mut grid: Vec<Vec<f64>> = series
        .iter()
        .map(|s| {
            times
                .iter()
                .map(|t| s.iter().find(|p| p.0 == *t).map_or(filler, |p| p.1))
                .collect()
        })
        .collect();
    let ffill = |grid: &mut Vec<Vec<f64>>| {
        for col in grid.iter_mut() {
            let mut last = f64::NAN;
            for v in col.iter_mut() {
                if v.is_nan() {
                    *v = last
                } else {
                    last = *v
                }
            }
        }
    };
    let bfill = |grid: &mut Vec<Vec<f64>>| {
        for col in grid.iter_mut() {
            let mut next = f64::NAN;
            for v in col.iter_mut().rev() {
                if v.is_nan() {
                    *v = next
                } else {
                    next = *v
                }
            }
        }
    };
    match fill {
        Fill::Ffill => ffill(&mut grid),
        Fill::Bfill => bfill(&mut grid),
        Fill::FullFfill => {
            ffill(&mut grid);
            bfill(&mut grid)
        }
        Fill::FullBfill => {
            bfill(&mut grid);
            ffill(&mut grid)
        }
        _ => {}
    }
    if let Fill::Overlap(needed) = fill {
        let full: Vec<usize> = (0..times.len())
            .filter(|&r| grid.iter().all(|c| !c[r].is_nan()))
            .collect();
        if full.is_empty() && needed > 0.0 {
            return Err(());
        }
        if let (Some(&a), Some(&b)) = (full.first(), full.last()) {
            times = times[a..=b].to_vec();
            for c in grid.iter_mut() {
                *c = c[a..=b].to_vec();
            }
        }
        if !times.is_empty() && (full.len() as f64 * 100.0 / times.len() as f64) < needed {
            return Err(());
        }
    }
    let drop = !matches!(fill, Fill::Overlap(_) | Fill::Null | Fill::Value(_));
    let keep = |v: f64| !drop || v.is_finite();
    let rows = times.len();
    let one = |t: Vec<i64>, v: Vec<f64>| {
        Answer::Aggregated(
            t.into_iter()
                .zip(v)
                .filter(|p| keep(p.1))
                .map(|(t, v)| (t, G, v))
                .collect(),
        )
    };
    let each = |t: &[i64], cols: Vec<Vec<f64>>| {
        Answer::PerReference(
            cols.into_iter()
                .map(|c| {
                    t.iter()
                        .zip(c)
                        .filter(|p| keep(p.1))
                        .map(|(t, v)| (*t, G, v))
                        .collect()
                })
                .collect(),
        )
    };
    Ok(match op {
        Op::Aggregate(r, rate) => {
            let mut v: Vec<f64> = (0..rows)
                .map(|i| {
                    reduce(
                        REDUCTIONS[*r],
                        &grid.iter().map(|c| c[i]).collect::<Vec<_>>(),
                    )
                })
                .collect();
            let mut t = times.clone();
            if *rate {
                v = v.windows(2).map(|w| w[1] - w[0]).collect();
                t = t.into_iter().skip(1).collect();
            }
            one(t, v)
        }
        Op::Rolling(r, w) => {
            if *w > rows {
                return Err(());
            }
            let cols = grid
                .iter()
                .map(|c| {
                    (0..=rows - w)
                        .map(|s| reduce(REDUCTIONS[*r], &c[s..s + w]))
                        .collect()
                })
                .collect();
            each(&times[w - 1..], cols)
        }
        Op::Difference => one(
            times.clone(),
            (0..rows).map(|i| grid[0][i] - grid[1][i]).collect(),
        ),
        Op::Scale(k) => each(
            &times,
            grid.iter()
                .map(|c| c.iter().map(|v| v * k).collect())
                .collect(),
        ),
    })
}

fn operations(op: &Op, n: usize) -> serde_json::Value {
    let all: Vec<serde_json::Value> = (0..n).map(|i| json!([format!("m{i}"), "mean"])).collect();
    let mut metric = vec![json!("metric")];
    metric.extend(all);
    match op {
        Op::Aggregate(r, rate) => json!([
            "aggregate",
            format!("{}{}", if *rate { "rate:" } else { "" }, REDUCTIONS[*r]),
            metric
        ]),
        Op::Rolling(r, w) => json!(["rolling", REDUCTIONS[*r], w, metric]),
        Op::Difference => json!(["-", ["metric", "m0", "mean"], ["metric", "m1", "mean"]]),
        Op::Scale(k) => json!(["*", metric, k]),
    }
}

fn same(a: &[(i64, i64, f64)], b: &[(i64, i64, f64)]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.0 == y.0
                && x.1 == y.1
                && ((x.2.is_nan() && y.2.is_nan())
                    || (x.2 - y.2).abs() <= 1e-9 * (1.0 + x.2.abs().max(y.2.abs())))
        })
}

fn series() -> impl Strategy<Value = Vec<Vec<(i64, f64)>>> {
    prop::collection::vec(
        prop::collection::btree_map(0i64..16, -1e3f64..1e3, 0..10).prop_map(|m| {
            m.into_iter()
                .map(|(t, v)| (1_700_000_000_000_000_000 + t * G, v))
                .collect::<Vec<_>>()
        }),
        2..6,
    )
}

fn fill() -> impl Strategy<Value = Fill> {
    prop_oneof![
        (0.0f64..100.0).prop_map(Fill::Overlap),
        Just(Fill::Overlap(100.0)),
        Just(Fill::Null),
        Just(Fill::Dropna),
        Just(Fill::Ffill),
        Just(Fill::Bfill),
        Just(Fill::FullFfill),
        Just(Fill::FullBfill),
        (-5.0f64..5.0).prop_map(Fill::Value),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..REDUCTIONS.len(), any::<bool>()).prop_map(|(r, rate)| Op::Aggregate(r, rate)),
        (0..REDUCTIONS.len(), 1usize..5).prop_map(|(r, w)| Op::Rolling(r, w)),
        Just(Op::Difference),
        (-3.0f64..3.0).prop_map(Op::Scale),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]
    #[test]
    fn evaluates_as_gnocchi_does(series in series(), fill in fill(), op in op()) {
        let keys: Vec<(String, String)> = (0..series.len()).map(|i| (format!("m{i}"), "mean".to_owned())).collect();
        let fetched: Vec<Fetched> = series.iter().enumerate().map(|(i, points)| Fetched { reference: i, granularity: G, points }).collect();
        let node = Node::parse(&operations(&op, series.len())).unwrap();
        let got = evaluate(&node, &keys, &fetched, Window { start: None, stop: None, fill });
        let want = plain(&series, &op, fill);
        match (got, want) {
            (Err(_), Err(())) => {}
            (Ok(Answer::Aggregated(a)), Ok(Answer::Aggregated(b))) => prop_assert!(same(&a, &b), "{a:?}\n!=\n{b:?}"),
            (Ok(Answer::PerReference(a)), Ok(Answer::PerReference(b))) => {
                prop_assert_eq!(a.len(), b.len());
                for (x, y) in a.iter().zip(&b) {
                    prop_assert!(same(x, y), "{x:?}\n!=\n{y:?}");
                }
            }
            (got, want) => prop_assert!(false, "got {got:?}, want {want:?}"),
        }
    }
}
