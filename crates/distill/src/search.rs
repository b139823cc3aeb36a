//! The model-facing part: run the teacher, then search each calibration sample's schedule
//! with the student's own update, batching model calls across samples and frontier states.

use std::collections::HashMap;
use std::ops::Range;

use candle_core::{DType, Tensor};
use stride_solvers::{Family, NoiseSchedule, Sampler, SamplerKind, Sigmas, TorchNoise};

use crate::dp::{self, OssSearch, Path};
use crate::error::DistillError;
use crate::model::{predict_x0, InOrder, Query, RowDenoiser};
use crate::student::{Distance, Student};
use crate::teacher::{self, Trajectory};

/// How the schedule is searched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// OSS: the student runs; per (step, grid index) the best landing survives. N + K N model
    /// evaluations per sample.
    Oss,
    /// BOSS / GITS: local costs of one student step between the teacher's own states, then the
    /// exact K-edge shortest path. Only the teacher's N evaluations per sample (with the x_t
    /// distance); single-step students (euler, ddim).
    Exact,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::Oss => "oss",
            Method::Exact => "exact",
        }
    }
}

impl std::str::FromStr for Method {
    type Err = DistillError;
    fn from_str(name: &str) -> Result<Self, DistillError> {
        match name {
            "oss" => Ok(Method::Oss),
            "exact" => Ok(Method::Exact),
            other => Err(DistillError::Config(format!("unknown method `{other}`: use oss or exact"))),
        }
    }
}

/// What to distill, and how.
#[derive(Debug, Clone)]
pub struct Config {
    /// The solver the schedule is for.
    pub student: Sampler,
    /// Its step count (= NFE for the supported solvers).
    pub steps: usize,
    /// The fine solver that makes the reference trajectory (euler: DDIM for VP models).
    pub teacher: Sampler,
    /// The teacher's grid, N + 1 sigmas ending at 0; the student lands only on these.
    pub grid: Sigmas,
    /// How the grid is spaced, for the schedule file.
    pub grid_name: String,
    pub method: Method,
    pub distance: Distance,
    /// Calibration samples searched together (their model calls share batches).
    pub batch: usize,
    /// Most rows in one model call of the search (the teacher's calls hold `batch` rows).
    pub max_rows: usize,
}

impl Config {
    /// OSS with the x_t distance (N + K N evaluations per sample; see [`Distance`]) over the
    /// default 200-step grid, an euler teacher, for `student` at `steps` steps.
    pub fn new(schedule: &NoiseSchedule, student: Sampler, steps: usize) -> Result<Self, DistillError> {
        Ok(Self {
            student,
            steps,
            teacher: Sampler::new(SamplerKind::Euler),
            grid: teacher::default_grid(schedule, teacher::DEFAULT_GRID_STEPS)?,
            grid_name: teacher::default_grid_name(schedule).into(),
            method: Method::Oss,
            distance: Distance::Xt,
            batch: 8,
            max_rows: 256,
        })
    }
}

/// One calibration sample's own schedule.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleSchedule {
    /// Grid indices from N down to 0.
    pub indices: Vec<usize>,
    /// The matching sigmas, first to last.
    pub sigmas: Vec<f64>,
    /// The search's objective: the final distance to the teacher (OSS), or the sum of local
    /// costs (exact).
    pub cost: f64,
}

/// The result of [`distill`].
#[derive(Debug, Clone)]
pub struct Distilled {
    pub grid: Sigmas,
    pub samples: Vec<SampleSchedule>,
    /// The teacher's final states, `(samples, ...)`, to measure a shared schedule against.
    pub teacher_finals: Tensor,
}

/// What [`distill`] reports as it goes.
#[derive(Debug)]
pub enum Progress<'a> {
    /// The teacher is about to run samples `first .. first + count` of `total`.
    Teacher { first: usize, count: usize, total: usize },
    /// Sample `index` of `total` is done.
    Sample { index: usize, total: usize, schedule: &'a SampleSchedule },
}

/// Distills one schedule per calibration sample. `noise` holds the samples' unit Gaussian
/// noise, `(samples, ...)`; each starts at the grid's first sigma.
pub fn distill(
    model: &dyn RowDenoiser,
    noise: &Tensor,
    config: &Config,
    progress: impl FnMut(Progress),
) -> Result<Distilled, DistillError> {
    let mut all = distill_counts(model, noise, config, &[config.steps], progress)?;
    Ok(all.remove(0))
}

/// [`distill`] for several step counts at once (`config.steps` is ignored), one result per
/// count in the order given. The teacher runs once; the OSS searches of counts whose student
/// takes the same update at every level share one search (the best landing per level and
/// index does not depend on how many steps follow), which costs the largest count's K N
/// evaluations instead of the sum; the exact mode shares the local costs.
pub fn distill_counts(
    model: &dyn RowDenoiser,
    noise: &Tensor,
    config: &Config,
    counts: &[usize],
    mut progress: impl FnMut(Progress),
) -> Result<Vec<Distilled>, DistillError> {
    let total = noise.dim(0)?;
    if noise.rank() < 2 || total == 0 {
        return Err(DistillError::Config(format!(
            "calibration noise must be a non-empty batch (samples, ...), got shape {:?}",
            noise.dims()
        )));
    }
    if counts.is_empty() {
        return Err(DistillError::Config("no step count to distill".into()));
    }
    if let Some(c) = counts.iter().enumerate().find_map(|(i, c)| counts[..i].contains(c).then_some(c)) {
        return Err(DistillError::Config(format!("step count {c} is given twice")));
    }
    let student = Student::new(config.student)?;
    let searches = groups(&student, counts)
        .into_iter()
        .map(|group| Search::new(model, config, group, noise.dims()[1..].to_vec()))
        .collect::<Result<Vec<_>, _>>()?;
    let family = model.schedule().family();
    let x_start = noise.affine(family.sigma(config.grid.first()), 0.0)?;
    let mut samples: Vec<Vec<SampleSchedule>> = vec![Vec::with_capacity(total); counts.len()];
    let mut finals = Vec::with_capacity(total);
    for first in (0..total).step_by(config.batch.max(1)) {
        let rows: Vec<usize> = (first..total.min(first + config.batch.max(1))).collect();
        progress(Progress::Teacher { first, count: rows.len(), total });
        let x = x_start.narrow(0, first, rows.len())?;
        let trajectories = teacher::run(model, &config.teacher, &config.grid, &x, &rows)?;
        for trajectory in &trajectories {
            finals.push(trajectory.states.get(0)?.reshape(searches[0].dims.as_slice())?);
        }
        for search in &searches {
            let paths = match config.method {
                Method::Oss => search.oss(model, &trajectories, &rows)?,
                Method::Exact => search.exact(model, &trajectories, &rows)?,
            };
            for (per_count, &index) in paths.into_iter().zip(&rows) {
                for (path, &steps) in per_count.into_iter().zip(&search.counts) {
                    let k = counts.iter().position(|&c| c == steps).expect("a searched count");
                    let sigmas = path.indices.iter().map(|&j| search.sigma[j]).collect();
                    samples[k].push(SampleSchedule { indices: path.indices, sigmas, cost: path.cost });
                    progress(Progress::Sample { index, total, schedule: &samples[k][samples[k].len() - 1] });
                }
            }
        }
    }
    let teacher_finals = Tensor::stack(&finals, 0)?;
    Ok(samples
        .into_iter()
        .map(|samples| Distilled {
            grid: config.grid.clone(),
            samples,
            teacher_finals: teacher_finals.clone(),
        })
        .collect())
}

/// Splits step counts into groups one search can serve: every non-final step of each count
/// has the order it has in the group's longest count. (The final step lands on sigma 0, where
/// every order returns the x0 prediction.) Euler and 2M always share; 3M splits where
/// `lower_order_final` changes its second-to-last step.
fn groups(student: &Student, counts: &[usize]) -> Vec<Vec<usize>> {
    let mut left: Vec<usize> = counts.to_vec();
    left.sort_unstable();
    left.dedup();
    let mut groups = Vec::new();
    while let Some(&longest) = left.last() {
        let (group, rest): (Vec<usize>, Vec<usize>) = left.iter().partition(|&&k| {
            (0..k.saturating_sub(1)).all(|l| student.step_order(l, k) == student.step_order(l, longest))
        });
        groups.push(group);
        left = rest;
    }
    groups
}

/// Per sample, the mean squared distance between `student` run over `sigmas` from `noise` and
/// `reference` (e.g. [`Distilled::teacher_finals`]): the fidelity a schedule gives. Row `b`
/// of `noise` is calibration sample `b` for the model's conditioning.
pub fn fidelity(
    model: &dyn RowDenoiser,
    student: &Sampler,
    sigmas: &Sigmas,
    noise: &Tensor,
    reference: &Tensor,
) -> Result<Vec<f64>, DistillError> {
    let rows: Vec<usize> = (0..noise.dim(0)?).collect();
    let adapter = InOrder { model, rows: &rows };
    let x = noise.affine(model.schedule().family().sigma(sigmas.first()), 0.0)?;
    let out = student.sample(&adapter, x, sigmas, &mut TorchNoise::new(&[0]), |_| {})?;
    let err = (out - reference)?.sqr()?.flatten_from(1)?.mean(1)?;
    Ok(err.to_dtype(DType::F64)?.to_vec1()?)
}

/// A kept student state: its position (flattened) and the x0 predictions made earlier on its
/// path with their grid indices, newest first.
struct Node {
    x: Tensor,
    history: Vec<(Tensor, usize)>,
}

/// Landing coefficients already worked out, by (order, landing range, prediction indices):
/// they depend on grid indices only, so samples share them.
type CoefficientCache = HashMap<Vec<usize>, Tensor>;

/// Everything one search needs besides the model.
struct Search {
    family: Family,
    /// Sigma of each grid index (0 = clean end).
    sigma: Vec<f64>,
    dims: Vec<usize>,
    student: Student,
    distance: Distance,
    /// The step counts this search serves (ascending; see [`groups`]).
    counts: Vec<usize>,
    max_rows: usize,
}

impl Search {
    fn new(
        model: &dyn RowDenoiser,
        config: &Config,
        counts: Vec<usize>,
        dims: Vec<usize>,
    ) -> Result<Self, DistillError> {
        let student = Student::new(config.student)?;
        if config.method == Method::Exact && student.order() > 1 {
            // Measured on the Gaussian mixture: local costs between the teacher's own states
            // trust the multistep extrapolation with the teacher's exact predictions, pick
            // short-then-long step pairs it amplifies, and lose to Karras.
            return Err(DistillError::Config(format!(
                "exact mode measures single steps between the teacher's states, which a multistep \
                 solver never takes; distill `{}` with the OSS search (or use euler / ddim)",
                config.student.kind
            )));
        }
        let mut sigma = config.grid.as_slice().to_vec();
        sigma.reverse();
        let n = config.grid.steps();
        if let Some(&bad) = counts.iter().find(|&&k| k == 0 || k > n) {
            return Err(DistillError::Config(format!(
                "{bad} steps on a teacher grid of {n} steps: need 1 <= steps <= {n}"
            )));
        }
        if sigma[0] != 0.0 {
            return Err(DistillError::Config(format!(
                "the teacher grid must end at sigma 0, not {}",
                sigma[0]
            )));
        }
        Ok(Self {
            family: model.schedule().family(),
            sigma,
            dims,
            student,
            distance: config.distance,
            counts,
            max_rows: config.max_rows,
        })
    }

    fn lambda(&self, j: usize) -> f64 {
        -self.sigma[j].ln()
    }

    /// The coefficient matrix `(to.len(), 1 + predictions)` of the landings from `from` on
    /// every index of `to`; `predictions` are the grid indices of the x0 predictions the step
    /// uses, newest first.
    fn coefficients(
        &self,
        predictions: &[usize],
        from: usize,
        to: Range<usize>,
        order: usize,
        cache: &mut CoefficientCache,
    ) -> Result<Tensor, DistillError> {
        let key: Vec<usize> = [order, to.start, to.end].iter().chain(predictions).copied().collect();
        if let Some(c) = cache.get(&key) {
            return Ok(c.clone());
        }
        let lambdas: Vec<f64> = predictions.iter().map(|&k| self.lambda(k)).collect();
        let mut c = Vec::with_capacity(to.len() * (predictions.len() + 1));
        for j in to.clone() {
            c.extend(self.student.coefficients(
                self.family,
                &lambdas,
                (self.sigma[from], self.sigma[j]),
                order,
            )?);
        }
        let c = Tensor::from_vec(c, (to.len(), predictions.len() + 1), &candle_core::Device::Cpu)?;
        cache.insert(key, c.clone());
        Ok(c)
    }

    /// The distances to the teacher of one step from `terms` = `[x, m0, earlier predictions]`
    /// (stacked, flattened) at `from` to every index of `to`.
    #[allow(clippy::too_many_arguments)]
    fn landing_costs(
        &self,
        model: &dyn RowDenoiser,
        sample: usize,
        trajectory: &Trajectory,
        (terms, predictions): (&Tensor, &[usize]),
        (from, to): (usize, Range<usize>),
        order: usize,
        cache: &mut CoefficientCache,
    ) -> Result<Vec<f64>, DistillError> {
        let c = self.coefficients(predictions, from, to.clone(), order, cache)?;
        let landings = c.to_device(terms.device())?.to_dtype(terms.dtype())?.matmul(terms)?;
        let (compared, targets) = match self.distance {
            Distance::Xt => (landings, &trajectory.states),
            Distance::X0 => (self.clean_estimates(model, sample, landings, to.clone())?, &trajectory.x0),
        };
        let diff = (compared - targets.narrow(0, to.start, to.len())?)?;
        Ok(diff.sqr()?.mean(1)?.to_dtype(DType::F64)?.to_vec1()?)
    }

    /// The model's x0 predictions at `landings` (rows for the indices `to`); a landing on the
    /// clean end is its own.
    fn clean_estimates(
        &self,
        model: &dyn RowDenoiser,
        sample: usize,
        landings: Tensor,
        to: Range<usize>,
    ) -> Result<Tensor, DistillError> {
        let rows: Vec<Tensor> = (0..to.len())
            .map(|r| landings.get(r)?.reshape(self.dims.as_slice()))
            .collect::<candle_core::Result<_>>()?;
        let noisy: Vec<Query> = to
            .clone()
            .zip(&rows)
            .filter(|(j, _)| *j > 0)
            .map(|(j, x)| Query { sample, sigma: self.sigma[j], x })
            .collect();
        let mut predicted = predict_x0(model, &noisy, self.student.x0_processing(), self.max_rows)?;
        if to.start == 0 {
            predicted.insert(0, rows[0].clone());
        }
        let flat: Vec<Tensor> =
            predicted.iter().map(|t| t.flatten_all()).collect::<candle_core::Result<_>>()?;
        Ok(Tensor::stack(&flat, 0)?)
    }

    /// The OSS search for a batch of samples, level by level: per sample, a path per count.
    fn oss(
        &self,
        model: &dyn RowDenoiser,
        trajectories: &[Trajectory],
        rows: &[usize],
    ) -> Result<Vec<Vec<Path>>, DistillError> {
        let n = self.sigma.len() - 1;
        let steps = self.counts[self.counts.len() - 1];
        let mut searches = trajectories
            .iter()
            .map(|t| {
                OssSearch::for_counts(n, &self.counts, Node { x: t.states.get(n)?, history: Vec::new() })
            })
            .collect::<Result<Vec<_>, DistillError>>()?;
        let mut cache = CoefficientCache::new();
        for level in 0..steps {
            let predictions = self.predict_frontiers(model, &searches, rows)?;
            let order = self.student.step_order(level, steps);
            for (((search, trajectory), m0), &sample) in
                searches.iter_mut().zip(trajectories).zip(predictions).zip(rows)
            {
                self.offer_level(model, sample, search, trajectory, &m0, order, &mut cache)?;
                search.commit(|from, node, to| self.land(node, &m0[from], from, to, order))?;
            }
            // A level's keys are not needed again (landing ranges shrink level by level).
            cache.clear();
        }
        searches.into_iter().map(OssSearch::finish_all).collect()
    }

    /// Evaluates the model at every frontier state of every search that has a step left to
    /// take (batched across samples); per search, the predictions by grid index. A count that
    /// has ended leaves states (at sigma 0 among them) that nothing steps from: they are not
    /// evaluated (some models cannot be at sigma 0).
    fn predict_frontiers(
        &self,
        model: &dyn RowDenoiser,
        searches: &[OssSearch<Node>],
        rows: &[usize],
    ) -> Result<Vec<Vec<Option<Tensor>>>, DistillError> {
        let live = |s: &OssSearch<Node>| -> Vec<(usize, Tensor)> {
            s.frontier()
                .iter()
                .filter(|(i, _)| !s.targets(*i).is_empty())
                .map(|(i, n)| (*i, n.x.clone()))
                .collect()
        };
        let live: Vec<Vec<(usize, Tensor)>> = searches.iter().map(live).collect();
        let shaped: Vec<Vec<Tensor>> = live
            .iter()
            .map(|states| states.iter().map(|(_, x)| x.reshape(self.dims.as_slice())).collect())
            .collect::<candle_core::Result<_>>()?;
        let mut queries = Vec::new();
        for ((states, xs), &sample) in live.iter().zip(&shaped).zip(rows) {
            for ((i, _), x) in states.iter().zip(xs) {
                queries.push(Query { sample, sigma: self.sigma[*i], x });
            }
        }
        let mut flat = predict_x0(model, &queries, self.student.x0_processing(), self.max_rows)?.into_iter();
        let n = self.sigma.len() - 1;
        let mut out = Vec::with_capacity(searches.len());
        for states in &live {
            let mut by_index = vec![None; n + 1];
            for (i, _) in states {
                by_index[*i] = flat.next().map(|t| t.flatten_all()).transpose()?;
            }
            out.push(by_index);
        }
        Ok(out)
    }

    /// Offers the cost of every allowed landing from every frontier state of one search.
    #[allow(clippy::too_many_arguments)]
    fn offer_level(
        &self,
        model: &dyn RowDenoiser,
        sample: usize,
        search: &mut OssSearch<Node>,
        trajectory: &Trajectory,
        m0: &[Option<Tensor>],
        order: usize,
        cache: &mut CoefficientCache,
    ) -> Result<(), DistillError> {
        let mut offers = Vec::new();
        for (from, node) in search.frontier() {
            let to = search.targets(*from);
            if to.is_empty() {
                continue;
            }
            let (terms, predictions) = self.terms(node, prediction(m0, *from)?, *from)?;
            let step = (&terms, predictions.as_slice());
            let costs =
                self.landing_costs(model, sample, trajectory, step, (*from, to.clone()), order, cache)?;
            offers.extend(to.zip(costs).map(|(j, cost)| (*from, j, cost)));
        }
        for (from, to, cost) in offers {
            search.offer(from, to, cost)?;
        }
        Ok(())
    }

    /// The stacked terms `[x, m0, earlier predictions...]` of a step from `node` (with its new
    /// prediction `m0` at `from`), and the grid indices of the predictions.
    fn terms(&self, node: &Node, m0: &Tensor, from: usize) -> Result<(Tensor, Vec<usize>), DistillError> {
        let mut terms = vec![node.x.clone(), m0.clone()];
        let mut predictions = vec![from];
        for (m, k) in node.history.iter().take(self.student.order() - 1) {
            terms.push(m.clone());
            predictions.push(*k);
        }
        Ok((Tensor::stack(&terms, 0)?, predictions))
    }

    /// The state of the landing `from -> to`, made by the student's own update.
    fn land(
        &self,
        node: &Node,
        m0: &Option<Tensor>,
        from: usize,
        to: usize,
        order: usize,
    ) -> Result<Node, DistillError> {
        let m0 = m0.as_ref().ok_or_else(|| missing(from))?;
        let mut history = vec![(m0.clone(), from)];
        history.extend(node.history.iter().take(self.student.order() - 1).cloned());
        let refs: Vec<(&Tensor, f64)> = history.iter().map(|(m, k)| (m, self.lambda(*k))).collect();
        let x = self.student.step(self.family, &node.x, &refs, (self.sigma[from], self.sigma[to]), order)?;
        history.truncate(self.student.order() - 1);
        Ok(Node { x, history })
    }

    /// The exact shortest paths of a batch of samples over the costs of one student step
    /// between the teacher's own states.
    fn exact(
        &self,
        model: &dyn RowDenoiser,
        trajectories: &[Trajectory],
        rows: &[usize],
    ) -> Result<Vec<Vec<Path>>, DistillError> {
        let n = self.sigma.len() - 1;
        let mut tables = vec![vec![Vec::new(); n + 1]; trajectories.len()];
        let mut cache = CoefficientCache::new();
        for i in 1..=n {
            for ((table, t), &sample) in tables.iter_mut().zip(trajectories).zip(rows) {
                let terms = Tensor::stack(&[t.states.get(i)?, t.x0.get(i)?], 0)?;
                let step = (&terms, &[i][..]);
                table[i] = self.landing_costs(model, sample, t, step, (i, 0..i), 1, &mut cache)?;
            }
        }
        tables
            .iter()
            .map(|t| self.counts.iter().map(|&k| dp::shortest_path(n, k, |i, j| t[i][j])).collect())
            .collect()
    }
}

fn prediction(m0: &[Option<Tensor>], from: usize) -> Result<&Tensor, DistillError> {
    m0[from].as_ref().ok_or_else(|| missing(from))
}

fn missing(from: usize) -> DistillError {
    DistillError::Config(format!("internal: no model prediction for the search state at grid index {from}"))
}
