//! The two searches over a teacher grid, generic over their costs so they can be checked
//! against brute force on synthetic tables.
//!
//! Grid indices follow the OSS code: index `n` is the noisiest grid point (where sampling
//! starts), index 0 the clean end. A path makes exactly `steps` jumps from `n` down to 0, each to
//! a strictly lower index, so a schedule always has the step count (and NFE) it was asked for.
//! (The released OSS code allows "at most K" steps by copying each level into the next; a
//! sampler run with fewer steps would not be the one the schedule was distilled for.)
//!
//! - [`OssSearch`] is the OSS dynamic programme: the student actually runs, level by level; per
//!   (level, landing index) it keeps the best landing and its state (for a multistep solver, the
//!   history along the path), and the cost of a landing is its distance to the teacher there.
//! - [`shortest_path`] is the exact K-edge shortest path of BOSS / GITS over local costs
//!   measured from the teacher's own states.

use std::ops::Range;

use crate::error::DistillError;

/// A path through the grid: the indices from `n` down to 0, and its cost.
#[derive(Debug, Clone, PartialEq)]
pub struct Path {
    pub indices: Vec<usize>,
    pub cost: f64,
}

/// `1 <= steps <= n`: a path needs at least one jump and can visit each grid point once.
fn check(n: usize, steps: usize) -> Result<(), DistillError> {
    if steps == 0 || steps > n {
        return Err(DistillError::Config(format!(
            "cannot place {steps} steps on a teacher grid of {n} steps (need 1 <= steps <= grid steps)"
        )));
    }
    Ok(())
}

/// The landing indices allowed for step `level` (0-based) of `steps` from index `from`: the
/// last step must land on 0, and every earlier one must leave a distinct index for each
/// remaining step.
pub fn targets(steps: usize, level: usize, from: usize) -> Range<usize> {
    targets_for(&[steps], level, from)
}

/// [`targets`] for a search of several step counts at once (`counts` ascending): a landing is
/// allowed if it is allowed for some count. With no count ending at this level, that is from
/// the nearest longer count's bound; with one, 0 as well (the range then also covers the few
/// indices in between, which no count can use but which cost nothing but their evaluation).
pub fn targets_for(counts: &[usize], level: usize, from: usize) -> Range<usize> {
    let ends_here = counts.contains(&(level + 1));
    match counts.iter().find(|&&k| k > level + 1) {
        None if ends_here => 0..from.min(1),
        None => 0..0,
        Some(&longer) => {
            let lower = if ends_here { 0 } else { longer - level - 1 };
            lower..from.max(lower)
        }
    }
}

/// `(cost, parent)` of the best way found to a grid index.
type Best = Option<(f64, usize)>;

/// Keeps `candidate` if it beats `slot`; NaN never does.
fn improve(slot: &mut Best, cost: f64, parent: usize) {
    if slot.is_none_or(|(c, _)| cost < c) && !cost.is_nan() {
        *slot = Some((cost, parent));
    }
}

/// The OSS search for one calibration sample, driven level by level so a caller can batch the
/// model evaluations of many samples and frontier states: per level, read the
/// [`frontier`](Self::frontier), [`offer`](Self::offer) the cost of every landing allowed by
/// [`targets`](Self::targets), then [`commit`](Self::commit) the winners' states.
///
/// Only the best landing per (level, index) survives: that is where OSS relies on optimal
/// substructure (a state closer to the teacher is assumed to continue at least as well).
#[derive(Debug)]
pub struct OssSearch<S> {
    n: usize,
    /// The step counts searched (ascending): each one's path ends at index 0 of its last level.
    counts: Vec<usize>,
    /// The states kept at the last committed level (the root before the first), by index.
    frontier: Vec<(usize, S)>,
    /// Per committed level, per landing index: the best landing's cost and parent.
    levels: Vec<Vec<Best>>,
    /// The level being built.
    offers: Vec<Best>,
}

impl<S> OssSearch<S> {
    /// A search of `steps` steps over a grid of `n` steps, starting from `root` at index `n`.
    pub fn new(n: usize, steps: usize, root: S) -> Result<Self, DistillError> {
        Self::for_counts(n, &[steps], root)
    }

    /// One search for several step counts: the best landing per (level, index) does not
    /// depend on how many steps follow, so the count-K path is the one that reaches index 0 at
    /// level K - 1. Each count's path equals its own search's, provided the student's update
    /// at a level does not depend on the count (see `distill_counts`).
    pub fn for_counts(n: usize, counts: &[usize], root: S) -> Result<Self, DistillError> {
        let mut counts = counts.to_vec();
        counts.sort_unstable();
        counts.dedup();
        if counts.is_empty() {
            return Err(DistillError::Config("no step count to search".into()));
        }
        for &steps in &counts {
            check(n, steps)?;
        }
        Ok(Self { n, counts, frontier: vec![(n, root)], levels: Vec::new(), offers: vec![None; n + 1] })
    }

    /// The most steps searched.
    fn steps(&self) -> usize {
        self.counts[self.counts.len() - 1]
    }

    /// The step being searched (0-based); equals the largest count when done.
    pub fn level(&self) -> usize {
        self.levels.len()
    }

    pub fn is_done(&self) -> bool {
        self.level() == self.steps()
    }

    /// The states the current step starts from, noisiest first.
    pub fn frontier(&self) -> &[(usize, S)] {
        &self.frontier
    }

    /// Where the current step may land from index `from`.
    pub fn targets(&self, from: usize) -> Range<usize> {
        targets_for(&self.counts, self.level(), from)
    }

    /// The cost of landing at `to` by one step from the frontier state at `from`; `to` must be
    /// one of [`Self::targets`]`(from)`.
    pub fn offer(&mut self, from: usize, to: usize, cost: f64) -> Result<(), DistillError> {
        // The frontier is sorted noisiest (highest index) first.
        let in_frontier = self.frontier.binary_search_by(|(i, _)| from.cmp(i)).is_ok();
        if !in_frontier || !self.targets(from).contains(&to) {
            return Err(DistillError::Config(format!(
                "landing {from} -> {to} is not allowed at step {} (from must be a frontier index, to \
                 one of its targets)",
                self.level()
            )));
        }
        improve(&mut self.offers[to], cost, from);
        Ok(())
    }

    /// Ends the level: `land(from, parent_state, to)` builds the state of each winning landing.
    pub fn commit<E>(&mut self, mut land: impl FnMut(usize, &S, usize) -> Result<S, E>) -> Result<(), E> {
        let offers = std::mem::replace(&mut self.offers, vec![None; self.n + 1]);
        let mut position = vec![usize::MAX; self.n + 1];
        for (p, (i, _)) in self.frontier.iter().enumerate() {
            position[*i] = p;
        }
        let mut next = Vec::new();
        for (to, offer) in offers.iter().enumerate().rev() {
            if let Some((_, from)) = offer {
                let parent = &self.frontier[position[*from]].1;
                next.push((to, land(*from, parent, to)?));
            }
        }
        self.frontier = next;
        self.levels.push(offers);
        Ok(())
    }

    /// The best path once every level is committed: the landing at 0 of the last step and its
    /// ancestors (a search of one count).
    pub fn finish(self) -> Result<Path, DistillError> {
        let steps = self.steps();
        self.path(steps)
    }

    /// The best path of every count, in ascending count order.
    pub fn finish_all(self) -> Result<Vec<Path>, DistillError> {
        self.counts.iter().map(|&steps| self.path(steps)).collect()
    }

    fn path(&self, steps: usize) -> Result<Path, DistillError> {
        let no_path = || DistillError::NoPath { n: self.n, steps };
        if self.level() < steps {
            return Err(DistillError::Config(format!(
                "the search was finished after {} of {steps} steps",
                self.level()
            )));
        }
        let Some((cost, _)) = self.levels[steps - 1][0] else { return Err(no_path()) };
        let mut indices = vec![0];
        for level in self.levels[..steps].iter().rev() {
            let here = indices[indices.len() - 1];
            let (_, parent) = level[here].ok_or_else(no_path)?;
            indices.push(parent);
        }
        indices.reverse();
        Ok(Path { indices, cost })
    }
}

/// Runs a whole [`OssSearch`] with a step function `step(from, state, to) -> (landing state,
/// cost)` tried for every allowed landing (simple; the model-facing driver batches instead).
pub fn oss_search<S, E: From<DistillError>>(
    n: usize,
    steps: usize,
    root: S,
    mut step: impl FnMut(usize, &S, usize) -> Result<(S, f64), E>,
) -> Result<Path, E> {
    let mut search = OssSearch::new(n, steps, root)?;
    while !search.is_done() {
        // Keep every candidate's state until the level is decided: a synthetic state is small.
        let mut states = std::collections::HashMap::new();
        let frontier: Vec<usize> = search.frontier().iter().map(|(i, _)| *i).collect();
        for (p, &from) in frontier.iter().enumerate() {
            for to in search.targets(from) {
                let (state, cost) = step(from, &search.frontier()[p].1, to)?;
                search.offer(from, to, cost)?;
                states.insert((from, to), state);
            }
        }
        search.commit(|from, _, to| Ok::<_, E>(states.remove(&(from, to)).expect("offered landing")))?;
    }
    Ok(search.finish()?)
}

/// The exact shortest path of exactly `steps` edges from `n` to 0 when the cost of a jump
/// depends only on its ends: `cost(i, j)` for `j < i` (BOSS `find_minimum_cost_path`).
/// O(steps n^2) cost look-ups.
pub fn shortest_path(
    n: usize,
    steps: usize,
    mut cost: impl FnMut(usize, usize) -> f64,
) -> Result<Path, DistillError> {
    check(n, steps)?;
    // best[k][j]: the cheapest way to stand on j after k + 1 jumps.
    let mut best: Vec<Vec<Best>> = Vec::with_capacity(steps);
    for level in 0..steps {
        let mut row: Vec<Best> = vec![None; n + 1];
        let sources: Vec<(usize, f64)> = match level {
            0 => vec![(n, 0.0)],
            _ => best[level - 1].iter().enumerate().filter_map(|(i, b)| b.map(|(c, _)| (i, c))).collect(),
        };
        for (i, base) in sources {
            for j in targets(steps, level, i) {
                improve(&mut row[j], base + cost(i, j), i);
            }
        }
        best.push(row);
    }
    let Some((total, _)) = best[steps - 1][0] else { return Err(DistillError::NoPath { n, steps }) };
    let mut indices = vec![0];
    for row in best.iter().rev() {
        let (_, parent) = row[indices[indices.len() - 1]].ok_or(DistillError::NoPath { n, steps })?;
        indices.push(parent);
    }
    indices.reverse();
    Ok(Path { indices, cost: total })
}
