//! Rewards: what choosing an option for a prompt is worth, from a cached quality table.

use serde::{Deserialize, Serialize};

/// How quality and cost combine (`--reward`, `--lambda`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Reward {
    /// `quality - lambda * steps / max_steps`: `lambda` moves along the speed/quality trade-off.
    Linear { lambda: f64 },
    /// AdaDiff's: the `top_k` options by quality get `O(u) + lambda Q(u)`, with
    /// `O(u) = 1 - steps / max_steps` the saving; every other option gets `-gamma`.
    AdaDiff { lambda: f64, gamma: f64, top_k: usize },
}

impl Reward {
    /// The reward of each option for one prompt, from its mean quality per option (options
    /// ascending in steps), one per option. Ties in quality rank the cheaper option first.
    pub fn rewards(&self, quality: &[f64], options: &[usize]) -> candle_core::Result<Vec<f64>> {
        if quality.len() != options.len() || options.is_empty() {
            candle_core::bail!(
                "{} quality values for {} options (one per option)",
                quality.len(),
                options.len()
            );
        }
        let max = *options.iter().max().unwrap_or(&1) as f64;
        Ok(match *self {
            Reward::Linear { lambda } => {
                quality.iter().zip(options).map(|(q, &s)| q - lambda * s as f64 / max).collect()
            }
            Reward::AdaDiff { lambda, gamma, top_k } => {
                let mut order: Vec<usize> = (0..quality.len()).collect();
                order.sort_by(|&a, &b| quality[b].total_cmp(&quality[a]).then(options[a].cmp(&options[b])));
                let top = &order[..top_k.min(order.len())];
                (0..quality.len())
                    .map(|i| {
                        if top.contains(&i) {
                            1.0 - options[i] as f64 / max + lambda * quality[i]
                        } else {
                            -gamma
                        }
                    })
                    .collect()
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_and_adadiff_rewards() {
        let options = [4, 10, 20];
        let quality = [0.5, 0.9, 0.9];
        let linear = Reward::Linear { lambda: 0.5 }.rewards(&quality, &options).unwrap();
        let expected = [0.5 - 0.5 * 0.2, 0.9 - 0.5 * 0.5, 0.9 - 0.5];
        for (a, b) in linear.iter().zip(expected) {
            assert!((a - b).abs() < 1e-12, "{linear:?}");
        }
        // Top 2 by quality are the 10- and 20-step options; the 4-step one gets -gamma.
        let ada = Reward::AdaDiff { lambda: 1.0, gamma: 0.3, top_k: 2 }.rewards(&quality, &options).unwrap();
        assert_eq!(ada[0], -0.3);
        assert!((ada[1] - (0.5 + 0.9)).abs() < 1e-12 && (ada[2] - (0.0 + 0.9)).abs() < 1e-12, "{ada:?}");
        // One quality per option, or an error (not an index out of bounds).
        let short = Reward::AdaDiff { lambda: 1.0, gamma: 0.3, top_k: 2 }.rewards(&quality, &options[..2]);
        assert!(short.unwrap_err().to_string().contains("3 quality values for 2 options"));
    }
}
