//! The searches against brute force over every K-subset of a small grid, on synthetic costs
//! with a known optimum.

use stride_distill::{oss_search, shortest_path, DistillError, Path};

/// A small deterministic generator (SplitMix64) for cost tables.
struct Rng(u64);

impl Rng {
    fn uniform(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    /// `table[i][j]` for `j < i <= n`.
    fn table(&mut self, n: usize) -> Vec<Vec<f64>> {
        (0..=n).map(|i| (0..i).map(|_| self.uniform()).collect()).collect()
    }
}

/// Every path of exactly `steps` jumps from `n` to 0: `n`, a decreasing `steps - 1`-subset of
/// `1..n`, then 0.
fn all_paths(n: usize, steps: usize) -> Vec<Vec<usize>> {
    fn rec(hi: usize, left: usize, prefix: &mut Vec<usize>, out: &mut Vec<Vec<usize>>) {
        if left == 0 {
            let mut p = prefix.clone();
            p.push(0);
            out.push(p);
            return;
        }
        for i in (left..hi).rev() {
            prefix.push(i);
            rec(i, left - 1, prefix, out);
            prefix.pop();
        }
    }
    let mut out = Vec::new();
    rec(n, steps - 1, &mut vec![n], &mut out);
    out
}

fn brute_force(n: usize, steps: usize, cost: impl Fn(&[usize]) -> f64) -> (Vec<usize>, f64) {
    all_paths(n, steps)
        .into_iter()
        .map(|p| {
            let c = cost(&p);
            (p, c)
        })
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap()
}

fn binomial(n: usize, k: usize) -> usize {
    (0..k).fold(1, |acc, i| acc * (n - i) / (i + 1))
}

fn assert_optimal(found: &Path, best: (Vec<usize>, f64), recomputed: f64, what: &str) {
    assert_eq!(found.indices.first(), best.0.first(), "{what}: starts at n");
    assert_eq!(found.indices.last(), Some(&0), "{what}: ends at 0");
    assert!(found.indices.windows(2).all(|w| w[1] < w[0]), "{what}: strictly decreasing {:?}", found.indices);
    assert!(
        (found.cost - best.1).abs() <= 1e-12,
        "{what}: DP cost {} vs brute force {} ({:?} vs {:?})",
        found.cost,
        best.1,
        found.indices,
        best.0
    );
    assert!(
        (recomputed - found.cost).abs() <= 1e-12,
        "{what}: the path's own cost {recomputed} vs reported {}",
        found.cost
    );
}

#[test]
fn enumeration_is_complete() {
    for n in 1..=9 {
        for k in 1..=n {
            assert_eq!(all_paths(n, k).len(), binomial(n - 1, k - 1), "n {n} k {k}");
        }
    }
}

#[test]
fn exact_mode_matches_brute_force() {
    let mut rng = Rng(1);
    for n in 1..=9 {
        for steps in 1..=n {
            let table = rng.table(n);
            let cost = |p: &[usize]| p.windows(2).map(|w| table[w[0]][w[1]]).sum::<f64>();
            let found = shortest_path(n, steps, |i, j| table[i][j]).unwrap();
            assert_eq!(found.indices.len(), steps + 1);
            assert_optimal(
                &found,
                brute_force(n, steps, cost),
                cost(&found.indices),
                &format!("n {n} K {steps}"),
            );
        }
    }
}

/// How a landing's distance follows from its parent's: `law(d_parent, from, to)`.
type Law<'a> = dyn Fn(f64, usize, usize) -> f64 + 'a;

/// The OSS search is exact when a landing's distance is an increasing function of its
/// parent's (optimal substructure): here `d_j = a_ij d_i + b_ij` with `a > 0`, `b >= 0`, and
/// the max-plus form `d_j = max(d_i, b_ij) + c_ij`.
#[test]
fn oss_search_matches_brute_force_under_optimal_substructure() {
    let mut rng = Rng(3);
    for n in 1..=9 {
        for steps in 1..=n {
            let (a, b, c) = (rng.table(n), rng.table(n), rng.table(n));
            let laws: [(&str, Box<Law>); 2] = [
                ("affine", Box::new(|d, i, j| (0.5 + a[i][j]) * d + b[i][j])),
                ("max-plus", Box::new(|d, i, j| d.max(b[i][j]) + 0.1 * c[i][j])),
            ];
            for (name, law) in &laws {
                let final_distance = |p: &[usize]| p.windows(2).fold(0.0, |d, w| law(d, w[0], w[1]));
                let found = oss_search(n, steps, 0.0, |i, d: &f64, j| {
                    let next = law(*d, i, j);
                    Ok::<_, DistillError>((next, next))
                })
                .unwrap();
                let what = format!("{name}, n {n} K {steps}");
                assert_optimal(
                    &found,
                    brute_force(n, steps, final_distance),
                    final_distance(&found.indices),
                    &what,
                );
            }
        }
    }
}

#[test]
fn impossible_step_counts_are_refused() {
    assert!(shortest_path(5, 0, |_, _| 0.0).is_err());
    let err = shortest_path(5, 6, |_, _| 0.0).unwrap_err().to_string();
    assert!(err.contains("6 steps") && err.contains("5 steps"), "{err}");
    assert!(oss_search(3, 4, (), |_, _, _| Ok::<_, DistillError>(((), 0.0))).is_err());
}

#[test]
fn nan_costs_never_win_and_all_nan_is_an_error() {
    // NaN on every jump but 5 -> 3 -> 0: both searches must take that path.
    let cost = |i: usize, j: usize| if (i, j) == (5, 3) || (i, j) == (3, 0) { 1.0 } else { f64::NAN };
    assert_eq!(shortest_path(5, 2, cost).unwrap().indices, vec![5, 3, 0]);
    let oss = oss_search(5, 2, (), |i, _, j| Ok::<_, DistillError>(((), cost(i, j)))).unwrap();
    assert_eq!(oss.indices, vec![5, 3, 0]);
    let err = shortest_path(5, 2, |_, _| f64::NAN).unwrap_err();
    assert!(matches!(err, DistillError::NoPath { .. }), "{err}");
}
