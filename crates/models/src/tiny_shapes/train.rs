//! Training tiny-shapes with the rectified-flow objective (as SD3 / Flux): `x_t = (1 - t) x0 + t eps`,
//! the network predicts `eps - x0`, `t` uniform ([`TimeSampling`]), 10% of prompts dropped for guidance.
//!
//! Everything a step uses is a function of `(seed, step)`: the scenes (the shapes world's
//! sample indices `step * batch ..`), the noise, the times and the dropped prompts. With the
//! weights, the optimiser moments and the EMA in the checkpoint, a resumed run continues
//! bit for bit where a killed one stopped.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};
use stride_shapes::World;
use stride_solvers::TorchGenerator;

use super::net::{Config, Net};
use super::{tokenizer, ModelError};

/// The training run's settings (stored in the checkpoint's `checkpoint.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub model: Config,
    pub steps: u64,
    pub batch_size: usize,
    pub lr: f64,
    pub warmup: u64,
    pub weight_decay: f64,
    pub ema_decay: f64,
    pub cfg_dropout: f64,
    pub seed: u64,
    /// The text encoder's learning rate as a fraction of `lr` (0 freezes it at its seeded
    /// initialisation). Older run files lack the field: 1.
    #[serde(default = "one")]
    pub text_lr_scale: f64,
    /// How the flow times of a batch are drawn. Older run files lack the field: logit-normal.
    #[serde(default = "TimeSampling::logit_normal")]
    pub time_sampling: TimeSampling,
    /// A model folder whose weights start the run instead of the seeded initialisation (a
    /// fine-tune); `model` must describe the same parameters. Read once, when the run starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<PathBuf>,
}

fn one() -> f64 {
    1.0
}

/// The distribution of training flow times `t` (1 = pure noise).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TimeSampling {
    /// `sigmoid(n)`, `n ~ N(0, 1)` (SD3's default): few draws near pure noise (0.16% above
    /// t = 0.95), where a sampler's first steps decide the background and the layout.
    LogitNormal,
    /// `t ~ U(0, 1)`, as the rectified-flow and flow-matching papers train.
    Uniform,
}

impl TimeSampling {
    fn logit_normal() -> Self {
        TimeSampling::LogitNormal
    }

    /// `n` times from `gen`, kept off the exact ends.
    fn draw(self, gen: &mut TorchGenerator, n: usize) -> Vec<f32> {
        let t = match self {
            TimeSampling::LogitNormal => gen.randn(n).iter().map(|x| 1.0 / (1.0 + (-x).exp())).collect(),
            TimeSampling::Uniform => gen.rand(n),
        };
        t.into_iter().map(|t: f32| t.clamp(1e-4, 1.0 - 1e-4)).collect()
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            model: Config { vocab_size: stride_shapes::VOCABULARY.len() + 3, ..Config::default() },
            // 1.5 s per step on two CPU cores: about 6.5 hours, run in resumable chunks.
            steps: 16000,
            batch_size: 32,
            lr: 7e-4,
            warmup: 500,
            weight_decay: 0.01,
            ema_decay: 0.999,
            cfg_dropout: 0.1,
            seed: 0,
            text_lr_scale: 1.0,
            time_sampling: TimeSampling::Uniform,
            init: None,
        }
    }
}

/// A training run: parameters, AdamW moments, EMA weights and the step reached.
pub struct Trainer {
    pub config: TrainConfig,
    pub step: u64,
    device: Device,
    varmap: VarMap,
    net: Net,
    tokenizer: tokenizers::Tokenizer,
    names: Vec<String>,
    /// AdamW moments and EMA weights, flat per parameter (updated by one fused loop).
    m: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    ema: Vec<Vec<f32>>,
}

const BETA1: f64 = 0.9;
const BETA2: f64 = 0.999;
const ADAM_EPS: f64 = 1e-8;

impl Trainer {
    /// A fresh run: parameters initialised from the seed, or read from `config.init`.
    pub fn new(config: TrainConfig, device: &Device) -> Result<Self, ModelError> {
        let init = config.init.clone();
        Self::build(config, init.as_deref(), device)
    }

    fn build(config: TrainConfig, init: Option<&Path>, device: &Device) -> Result<Self, ModelError> {
        config.model.validate().map_err(ModelError::Config)?;
        let varmap = VarMap::new();
        // candle's CPU RNG cannot be seeded: initialise every parameter from its own seeded
        // generator (seed, name) instead, so a fresh run is reproducible.
        let vb = crate::init::seeded(&varmap, config.seed, device);
        let net = Net::new(&config.model, vb)?;
        let mut names: Vec<String> = varmap.data().lock().expect("varmap lock").keys().cloned().collect();
        names.sort();
        if let Some(dir) = init {
            load_weights(&varmap, &names, &dir.join("model.safetensors"), device)?;
        }
        let (m, v, ema) = {
            let data = varmap.data().lock().expect("varmap lock");
            let mut ema = Vec::with_capacity(names.len());
            for n in &names {
                ema.push(data[n].as_tensor().flatten_all()?.to_vec1::<f32>()?);
            }
            let zeros: Vec<Vec<f32>> = ema.iter().map(|e| vec![0f32; e.len()]).collect();
            (zeros.clone(), zeros, ema)
        };
        let tokenizer = tokenizer::build(&stride_shapes::VOCABULARY)?;
        Ok(Self { config, step: 0, device: device.clone(), varmap, net, tokenizer, names, m, v, ema })
    }

    fn var(&self, name: &str) -> Var {
        self.varmap.data().lock().expect("varmap lock")[name].clone()
    }

    /// The learning rate at `step`: linear warm-up, then cosine to 0.
    pub fn lr_at(&self, step: u64) -> f64 {
        let c = &self.config;
        if step < c.warmup {
            return c.lr * (step + 1) as f64 / c.warmup as f64;
        }
        let progress = (step - c.warmup) as f64 / (c.steps - c.warmup).max(1) as f64;
        0.5 * c.lr * (1.0 + (std::f64::consts::PI * progress.min(1.0)).cos())
    }

    /// The batch of step `step`: images `[B, 3, 32, 32]` and prompts (some dropped to "").
    fn batch(&self, step: u64) -> Result<(Tensor, Vec<String>, TorchGenerator), ModelError> {
        let c = &self.config;
        let world = World::new(c.seed);
        let mut gen = TorchGenerator::new(c.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(step));
        // A standard normal below the (cfg_dropout) quantile drops the prompt.
        let drop_threshold = normal_quantile(c.cfg_dropout);
        let drops = gen.randn(c.batch_size);
        let mut pixels = Vec::with_capacity(c.batch_size * stride_shapes::LEN);
        let mut prompts = Vec::with_capacity(c.batch_size);
        for (i, drop) in drops.iter().enumerate() {
            let sample = world.sample(step * c.batch_size as u64 + i as u64);
            pixels.extend_from_slice(stride_shapes::render(&sample.scene).as_chw());
            let dropped = f64::from(*drop) < drop_threshold;
            prompts.push(if dropped { String::new() } else { sample.prompt.text });
        }
        let side = stride_shapes::SIDE;
        let images = Tensor::from_vec(pixels, (c.batch_size, 3, side, side), &self.device)?;
        Ok((images, prompts, gen))
    }

    fn tokens(&self, prompts: &[String]) -> Result<(Tensor, Tensor), ModelError> {
        tokenizer::encode_batch(&self.tokenizer, prompts, self.config.model.max_tokens, &self.device)
    }

    /// One optimisation step; returns the loss.
    pub fn train_step(&mut self) -> Result<f32, ModelError> {
        let step = self.step;
        let (x0, prompts, mut gen) = self.batch(step)?;
        let b = self.config.batch_size;
        let eps = Tensor::from_vec(gen.randn(x0.elem_count()), x0.shape(), &self.device)?;
        let t = Tensor::from_vec(self.config.time_sampling.draw(&mut gen, b), b, &self.device)?;
        let tb = t.reshape((b, 1, 1, 1))?;
        let xt = (x0.broadcast_mul(&(1.0 - &tb)?)? + eps.broadcast_mul(&tb)?)?;
        let target = (&eps - &x0)?;
        let (ids, mask) = self.tokens(&prompts)?;
        let text = self.net.text.forward(&ids, &mask)?;
        let pred = self.net.forward(&xt, &t, &text, &mask)?;
        let loss = (pred - target)?.sqr()?.mean_all()?;
        let grads = loss.backward()?;
        self.update(&grads, self.lr_at(step))?;
        self.step += 1;
        Ok(loss.to_scalar::<f32>()?)
    }

    /// AdamW (decoupled weight decay) and the EMA, one fused pass over each parameter.
    fn update(&mut self, grads: &candle_core::backprop::GradStore, lr: f64) -> Result<(), ModelError> {
        let t1 = (self.step + 1) as i32;
        let (bc1, bc2) = (1.0 - BETA1.powi(t1), 1.0 - BETA2.powi(t1));
        let (b1, b2) = (BETA1 as f32, BETA2 as f32);
        let inv_sqrt_bc2 = (1.0 / bc2.sqrt()) as f32;
        let d = self.config.ema_decay as f32;
        for i in 0..self.names.len() {
            let lr = if self.names[i].starts_with("text.") { lr * self.config.text_lr_scale } else { lr };
            let step_size = (lr / bc1) as f32;
            let decay = (1.0 - lr * self.config.weight_decay) as f32;
            let var = self.var(&self.names[i]);
            let Some(g) = grads.get(var.as_tensor()) else { continue };
            let g = g.flatten_all()?.to_vec1::<f32>()?;
            let mut w = var.as_tensor().flatten_all()?.to_vec1::<f32>()?;
            let (m, v, ema) = (&mut self.m[i], &mut self.v[i], &mut self.ema[i]);
            for j in 0..w.len() {
                m[j] = b1 * m[j] + (1.0 - b1) * g[j];
                v[j] = b2 * v[j] + (1.0 - b2) * g[j] * g[j];
                let update = m[j] / (v[j].sqrt() * inv_sqrt_bc2 + ADAM_EPS as f32);
                w[j] = w[j] * decay - step_size * update;
                ema[j] = d * ema[j] + (1.0 - d) * w[j];
            }
            var.set(&Tensor::from_vec(w, var.shape(), &self.device)?)?;
        }
        Ok(())
    }

    fn flat_tensor(&self, i: usize, values: &[f32]) -> Result<Tensor, ModelError> {
        Ok(Tensor::from_slice(values, self.var(&self.names[i]).shape(), &self.device)?)
    }

    /// Writes the checkpoint (weights, moments, EMA, step) atomically under `dir`. The step
    /// is also stored in the safetensors file, which is the one that counts: a kill between
    /// the two files' renames leaves new weights beside the old `checkpoint.json`.
    pub fn save_checkpoint(&self, dir: &Path) -> Result<(), ModelError> {
        std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        let mut tensors: HashMap<String, Tensor> = HashMap::new();
        tensors.insert(STEP_KEY.into(), Tensor::new(&[self.step as i64], &self.device)?);
        for (i, name) in self.names.iter().enumerate() {
            tensors.insert(format!("param.{name}"), self.var(name).as_tensor().clone());
            tensors.insert(format!("adam_m.{name}"), self.flat_tensor(i, &self.m[i])?);
            tensors.insert(format!("adam_v.{name}"), self.flat_tensor(i, &self.v[i])?);
            tensors.insert(format!("ema.{name}"), self.flat_tensor(i, &self.ema[i])?);
        }
        let weights = dir.join("checkpoint.safetensors");
        write_atomic(&weights, |tmp| {
            candle_core::safetensors::save(&tensors, tmp).map_err(|e| e.to_string())
        })?;
        let state = CheckpointState { step: self.step, config: self.config.clone() };
        let json = serde_json::to_string_pretty(&state).expect("serialisable");
        write_atomic(&dir.join("checkpoint.json"), |tmp| {
            std::fs::write(tmp, &json).map_err(|e| e.to_string())
        })
    }

    /// Resumes from the checkpoint under `dir` with the training config stored in it; `steps`,
    /// if given, replaces its total (so a run can be extended or shortened).
    pub fn resume(dir: &Path, steps: Option<u64>, device: &Device) -> Result<Self, ModelError> {
        let json_path = dir.join("checkpoint.json");
        let text = std::fs::read_to_string(&json_path).map_err(|e| io_err(&json_path, e))?;
        let state: CheckpointState = serde_json::from_str(&text)
            .map_err(|e| ModelError::File { path: json_path.clone(), reason: e.to_string() })?;
        let mut config = state.config;
        if let Some(steps) = steps {
            config.steps = steps;
        }
        // The checkpoint holds every parameter: a fine-tune's `init` folder is not read again.
        let mut trainer = Self::build(config, None, device)?;
        let weights = dir.join("checkpoint.safetensors");
        let tensors = candle_core::safetensors::load(&weights, device)
            .map_err(|e| ModelError::File { path: weights.clone(), reason: e.to_string() })?;
        for (i, name) in trainer.names.clone().iter().enumerate() {
            let var = trainer.var(name);
            let get = |prefix: &str| named(&tensors, &format!("{prefix}.{name}"), var.dims(), &weights);
            var.set(&get("param")?)?;
            trainer.m[i] = get("adam_m")?.flatten_all()?.to_vec1::<f32>()?;
            trainer.v[i] = get("adam_v")?.flatten_all()?.to_vec1::<f32>()?;
            trainer.ema[i] = get("ema")?.flatten_all()?.to_vec1::<f32>()?;
        }
        // Checkpoints from before the step was stored with the weights have it in the JSON only.
        trainer.step = match tensors.get(STEP_KEY) {
            Some(step) => step.flatten_all()?.to_vec1::<i64>()?.first().map_or(state.step, |&s| s as u64),
            None => state.step,
        };
        Ok(trainer)
    }

    /// Writes the EMA weights as a loadable model folder (`config.json`, `tokenizer.json`,
    /// `model.safetensors`).
    pub fn export(&self, dir: &Path) -> Result<(), ModelError> {
        self.export_weights(dir, true)
    }

    /// As [`Self::export`], with the EMA weights (`ema`) or the raw ones (early in a run the
    /// EMA still leans on the initialisation).
    pub fn export_weights(&self, dir: &Path, ema: bool) -> Result<(), ModelError> {
        std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        let mut tensors: HashMap<String, Tensor> = HashMap::new();
        for (i, name) in self.names.iter().enumerate() {
            let tensor =
                if ema { self.flat_tensor(i, &self.ema[i])? } else { self.var(name).as_tensor().copy()? };
            tensors.insert(name.clone(), tensor);
        }
        write_atomic(&dir.join("model.safetensors"), |tmp| {
            candle_core::safetensors::save(&tensors, tmp).map_err(|e| e.to_string())
        })?;
        let config = serde_json::to_string_pretty(&self.config.model).expect("serialisable");
        write_atomic(&dir.join("config.json"), |tmp| {
            std::fs::write(tmp, &config).map_err(|e| e.to_string())
        })?;
        write_atomic(&dir.join("tokenizer.json"), |tmp| {
            self.tokenizer.save(tmp, true).map_err(|e| e.to_string())
        })
    }

    /// Every parameter, for comparing two runs.
    pub fn parameters(&self) -> Vec<(String, Tensor)> {
        self.names.iter().map(|n| (n.clone(), self.var(n).as_tensor().clone())).collect()
    }

    pub fn parameter_count(&self) -> usize {
        self.names.iter().map(|n| self.var(n).as_tensor().elem_count()).sum()
    }
}

/// The checkpoint tensor holding the step reached.
const STEP_KEY: &str = "state.step";

#[derive(Serialize, Deserialize)]
struct CheckpointState {
    step: u64,
    config: TrainConfig,
}

/// Sets every parameter in `varmap` from the safetensors file at `path`, which must hold each
/// of `names` with the same shape.
fn load_weights(varmap: &VarMap, names: &[String], path: &Path, device: &Device) -> Result<(), ModelError> {
    let tensors = candle_core::safetensors::load(path, device)
        .map_err(|e| ModelError::File { path: path.to_path_buf(), reason: e.to_string() })?;
    let data = varmap.data().lock().expect("varmap lock");
    for name in names {
        let var = &data[name];
        var.set(&named(&tensors, name, var.dims(), path)?.to_dtype(DType::F32)?)?;
    }
    Ok(())
}

/// `tensors[key]` (read from `path`), which must have the shape `dims` of the run's model.
fn named(
    tensors: &HashMap<String, Tensor>,
    key: &str,
    dims: &[usize],
    path: &Path,
) -> Result<Tensor, ModelError> {
    let file_err = |reason: String| ModelError::File { path: path.to_path_buf(), reason };
    let value = tensors
        .get(key)
        .ok_or_else(|| file_err(format!("no {key}: these weights are not of the run's model config")))?;
    if value.dims() != dims {
        return Err(file_err(format!("{key} is {:?}, the run's model config needs {dims:?}", value.dims())));
    }
    Ok(value.clone())
}

fn io_err(path: &Path, e: std::io::Error) -> ModelError {
    ModelError::File { path: path.to_path_buf(), reason: e.to_string() }
}

/// Writes through a temporary file in the same folder, synced, then renames: neither a kill
/// nor a power cut leaves a half-written file under the final name.
fn write_atomic(path: &Path, write: impl FnOnce(&Path) -> Result<(), String>) -> Result<(), ModelError> {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    let tmp: PathBuf = path.with_file_name(name);
    write(&tmp).map_err(|reason| ModelError::File { path: tmp.clone(), reason })?;
    std::fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(|e| io_err(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| io_err(path, e))
}

/// The standard normal quantile (Acklam's rational approximation, |error| < 1.2e-9).
fn normal_quantile(p: f64) -> f64 {
    if p <= 0.0 {
        return f64::NEG_INFINITY;
    }
    if p >= 1.0 {
        return f64::INFINITY;
    }
    const A: [f64; 6] = [
        -3.969683028665376e1,
        2.209460984245205e2,
        -2.759285104469687e2,
        1.38357751867269e2,
        -3.066479806614716e1,
        2.506628277459239,
    ];
    const B: [f64; 5] = [
        -5.447609879822406e1,
        1.615858368580409e2,
        -1.556989798598866e2,
        6.680131188771972e1,
        -1.328068155288572e1,
    ];
    const C: [f64; 6] = [
        -7.784894002430293e-3,
        -3.223964580411365e-1,
        -2.400758277161838,
        -2.549732539343734,
        4.374664141464968,
        2.938163982698783,
    ];
    const D: [f64; 4] = [7.784695709041462e-3, 3.224671290700398e-1, 2.445134137142996, 3.754408661907416];
    let tail = |q: f64| {
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    if p < 0.02425 {
        tail((-2.0 * p.ln()).sqrt())
    } else if p > 1.0 - 0.02425 {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Run files from before `time_sampling` existed resume with the logit-normal times they
    /// were trained with; new runs draw uniform times.
    #[test]
    fn old_run_files_keep_logit_normal_times() {
        let mut json = serde_json::to_value(TrainConfig::default()).unwrap();
        assert_eq!(json["time_sampling"], "uniform");
        json.as_object_mut().unwrap().remove("time_sampling");
        let old: TrainConfig = serde_json::from_value(json).unwrap();
        assert_eq!(old.time_sampling, TimeSampling::LogitNormal);
    }

    /// The share of times above 0.95 (the first steps of a sampler): 5% uniform, and for the
    /// logit-normal 1 - Phi(logit(0.95)) = 1 - Phi(2.944) = 0.16%. 20000 draws: the uniform
    /// share's standard error is 0.0015, so the bounds are 3 of them; 0.4% is 6 of the
    /// logit-normal's (0.0003).
    #[test]
    fn uniform_times_reach_pure_noise_and_logit_normal_ones_rarely_do() {
        let n = 20_000;
        let share = |s: TimeSampling| {
            let t = s.draw(&mut TorchGenerator::new(5), n);
            assert!(t.iter().all(|t| (1e-4..=1.0 - 1e-4).contains(t)));
            t.iter().filter(|&&t| t > 0.95).count() as f64 / n as f64
        };
        let uniform = share(TimeSampling::Uniform);
        assert!((0.0455..=0.0545).contains(&uniform), "uniform share above 0.95: {uniform}");
        let logit_normal = share(TimeSampling::LogitNormal);
        assert!(logit_normal < 0.004, "logit-normal share above 0.95: {logit_normal}");
    }
}
