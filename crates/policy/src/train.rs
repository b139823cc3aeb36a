//! REINFORCE over a cached reward table: a contextual bandit (one choice per prompt, its
//! reward looked up), so training costs no model evaluation.

use candle_core::{DType, Result, Tensor, D};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarMap};
use serde::{Deserialize, Serialize};

use crate::net::PolicyNet;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainSettings {
    pub steps: usize,
    /// Prompts per update.
    pub batch: usize,
    pub lr: f64,
    /// Weight of the entropy bonus (keeps exploring early); the temperature `beta` of
    /// [`Objective::MaxEntropy`].
    pub entropy: f64,
    pub baseline: Baseline,
    pub objective: Objective,
    pub seed: u64,
}

/// What a sampled choice's reward is compared with (REINFORCE).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Baseline {
    /// A running mean of the rewards (momentum `m`): AdaDiff's.
    RunningMean { momentum: f64 },
    /// The prompt's expected reward under the current policy, `sum_o pi(o | p) r(p, o)`: the
    /// table holds every option's reward, so the value is exact, and the advantage says only
    /// how the sampled option compares with this prompt's alternatives.
    Value,
}

/// What the updates follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Objective {
    /// AdaDiff's REINFORCE: one sampled option per prompt, `(r - baseline) grad log pi`, plus
    /// the entropy bonus.
    Reinforce,
    /// The expectation of that gradient, `grad sum_o pi(o | p) r(p, o)`, exact from the table
    /// (which holds every option's reward), plus the entropy bonus.
    Expected,
    /// The optimum of the entropy-regularised bandit, `max E_pi[r] + beta H(pi)`, is known per
    /// prompt: `pi* = softmax(r / beta)`; fit it by cross-entropy. Policy-gradient updates on
    /// a softmax stall once the policy is nearly sure of a wrong option (the gradient toward a
    /// better one is weighted by that option's vanishing probability); this target has no such
    /// plateau. On the synthetic table of the tests REINFORCE and the exact expected gradient
    /// settle at 50% best-option accuracy (they learn the two cheapest needs, then the policy
    /// collapses), this reaches 100%.
    MaxEntropy,
}

impl Default for TrainSettings {
    fn default() -> Self {
        Self {
            steps: 800,
            batch: 64,
            lr: 3e-3,
            entropy: 0.01,
            baseline: Baseline::Value,
            objective: Objective::MaxEntropy,
            seed: 0,
        }
    }
}

/// SplitMix64: the sampler's reproducible uniform numbers.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// What one update saw.
#[derive(Debug, Clone, Copy)]
pub struct StepReport {
    pub step: usize,
    /// Mean reward of the sampled choices.
    pub reward: f64,
    /// Mean entropy of the policy over the batch (nats).
    pub entropy: f64,
}

/// Trains `net` (its variables in `varmap`) on prompts' `features` `[P, L, F]` / `mask`
/// `[P, L]` and `rewards[p][o]`, the reward of option `o` for prompt `p`. Each update takes a
/// batch of prompts and follows the settings' [`Objective`]: by default a cross-entropy fit to
/// `softmax(r / beta)`; with [`Objective::Reinforce`] one option sampled per prompt and
/// `(r - baseline) grad log pi(o | p)` plus an entropy bonus ([`Baseline`]).
pub fn train(
    net: &PolicyNet,
    varmap: &VarMap,
    features: &Tensor,
    mask: &Tensor,
    rewards: &[Vec<f64>],
    settings: &TrainSettings,
    mut on_step: impl FnMut(StepReport),
) -> Result<()> {
    let prompts = features.dim(0)?;
    let options = net.config.options.len();
    if prompts == 0 || rewards.len() != prompts || rewards.iter().any(|r| r.len() != options) {
        candle_core::bail!("need one reward per option ({options}) for each of the {prompts} prompts");
    }
    let params = ParamsAdamW { lr: settings.lr, weight_decay: 0.0, ..Default::default() };
    let mut optimizer = AdamW::new(varmap.all_vars(), params)?;
    let mut rng = SplitMix(settings.seed);
    let mut running: Option<f64> = None;
    let device = features.device();
    for step in 0..settings.steps {
        let picked: Vec<u32> = (0..settings.batch)
            .map(|_| ((rng.next() * prompts as f64) as usize).min(prompts - 1) as u32)
            .collect();
        let index = Tensor::new(picked.as_slice(), device)?;
        let logits = net.forward(&features.index_select(&index, 0)?, &mask.index_select(&index, 0)?)?;
        let log_probs = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
        let probs: Vec<Vec<f32>> = log_probs.exp()?.to_dtype(DType::F32)?.to_vec2()?;
        let mut actions = Vec::with_capacity(picked.len());
        let mut sampled_rewards = Vec::with_capacity(picked.len());
        for (row, &p) in probs.iter().zip(&picked) {
            let u = rng.next() as f32;
            let mut cumulative = 0.0;
            let action = row.iter().position(|&q| {
                cumulative += q;
                u < cumulative
            });
            let action = action.unwrap_or(options - 1);
            actions.push(action as u32);
            sampled_rewards.push(rewards[p as usize][action]);
        }
        let mean_reward = sampled_rewards.iter().sum::<f64>() / sampled_rewards.len() as f64;
        let advantages: Vec<f32> = match settings.baseline {
            Baseline::RunningMean { momentum } => {
                let b = *running.get_or_insert(mean_reward);
                running = Some(momentum * b + (1.0 - momentum) * mean_reward);
                sampled_rewards.iter().map(|r| (r - b) as f32).collect()
            }
            Baseline::Value => probs
                .iter()
                .zip(&picked)
                .zip(&sampled_rewards)
                .map(|((row, &p), r)| {
                    let value: f64 = row.iter().zip(&rewards[p as usize]).map(|(&q, r)| q as f64 * r).sum();
                    (r - value) as f32
                })
                .collect(),
        };
        let table = || -> Result<Tensor> {
            let table: Vec<f32> =
                picked.iter().flat_map(|&p| rewards[p as usize].iter().map(|&r| r as f32)).collect();
            Tensor::from_vec(table, (picked.len(), options), device)
        };
        let entropy = (log_probs.exp()? * &log_probs)?.sum(D::Minus1)?.mean_all()?.neg()?;
        let loss = match settings.objective {
            Objective::Reinforce => {
                let actions = Tensor::new(actions.as_slice(), device)?.unsqueeze(1)?;
                let chosen = log_probs.gather(&actions, 1)?.squeeze(1)?;
                let gain = (chosen * Tensor::new(advantages.as_slice(), device)?)?.mean_all()?;
                (gain + (&entropy * settings.entropy)?)?.neg()?
            }
            Objective::Expected => {
                let gain = (log_probs.exp()? * table()?)?.sum(D::Minus1)?.mean_all()?;
                (gain + (&entropy * settings.entropy)?)?.neg()?
            }
            Objective::MaxEntropy => {
                let target = candle_nn::ops::softmax(&(table()? / settings.entropy.max(1e-6))?, D::Minus1)?;
                (target * &log_probs)?.sum(D::Minus1)?.mean_all()?.neg()?
            }
        };
        optimizer.backward_step(&loss)?;
        on_step(StepReport { step, reward: mean_reward, entropy: entropy.to_scalar::<f32>()? as f64 });
    }
    Ok(())
}
