//! Noise sources: where the initial latent and every stochastic step's noise come from.
//!
//! [`TorchNoise`] draws on the CPU with a torch-compatible generator and then moves the noise
//! to the tensor's device and dtype, so one seed gives the same image on every device and
//! thread count. Each sample of a batch has its own generator (seed, seed + 1, ...), so an
//! image does not depend on the batch it was generated in.

use std::collections::VecDeque;

use candle_core::{DType, Device, Result, Shape, Tensor};

use crate::rng::TorchGenerator;

/// A source of standard normal noise.
pub trait NoiseSource {
    /// Standard normal noise of the given shape (batch first), dtype and device.
    fn sample(&mut self, shape: &Shape, dtype: DType, device: &Device) -> Result<Tensor>;

    /// Noise shaped like `like`.
    fn sample_like(&mut self, like: &Tensor) -> Result<Tensor> {
        self.sample(like.shape(), like.dtype(), like.device())
    }
}

/// Seeded noise, one torch-compatible generator per sample: sample `i` of a batch reproduces
/// `torch.manual_seed(seeds[i]); torch.randn(...)` for its own rows, step after step.
///
/// ```
/// use candle_core::{DType, Device, Shape};
/// use stride_solvers::{NoiseSource, TorchNoise};
/// let mut noise = TorchNoise::new(&[42]);
/// let x = noise.sample(&Shape::from((1, 4, 8, 8)), DType::F32, &Device::Cpu).unwrap();
/// assert_eq!(x.dims(), &[1, 4, 8, 8]);
/// ```
pub struct TorchNoise {
    generators: Vec<TorchGenerator>,
}

impl TorchNoise {
    /// One generator per sample, seeded with `seeds[i]`.
    pub fn new(seeds: &[u64]) -> Self {
        Self { generators: seeds.iter().map(|&s| TorchGenerator::new(s)).collect() }
    }

    /// Generators for a batch of `batch` samples with seeds `seed, seed + 1, ...` (the
    /// community's convention for batches).
    pub fn consecutive(seed: u64, batch: usize) -> Self {
        let seeds: Vec<u64> = (0..batch as u64).map(|i| seed.wrapping_add(i)).collect();
        Self::new(&seeds)
    }
}

impl NoiseSource for TorchNoise {
    fn sample(&mut self, shape: &Shape, dtype: DType, device: &Device) -> Result<Tensor> {
        let dims = shape.dims();
        if self.generators.is_empty() {
            candle_core::bail!("a noise source needs at least one seed (one per sample)");
        }
        if dims.first() != Some(&self.generators.len()) {
            candle_core::bail!(
                "noise for shape {shape:?} asked of a source seeded for {} samples",
                self.generators.len()
            );
        }
        let per_sample = shape.elem_count() / self.generators.len();
        let mut values = Vec::with_capacity(shape.elem_count());
        for generator in &mut self.generators {
            values.extend(generator.randn(per_sample));
        }
        Tensor::from_vec(values, shape, &Device::Cpu)?.to_dtype(dtype)?.to_device(device)
    }
}

/// Replays given noise tensors in order: for tests and reference parity.
pub struct ReplayNoise {
    queue: VecDeque<Tensor>,
}

impl ReplayNoise {
    pub fn new(noises: impl IntoIterator<Item = Tensor>) -> Self {
        Self { queue: noises.into_iter().collect() }
    }

    /// How many tensors have not been used.
    pub fn remaining(&self) -> usize {
        self.queue.len()
    }
}

impl NoiseSource for ReplayNoise {
    fn sample(&mut self, shape: &Shape, dtype: DType, device: &Device) -> Result<Tensor> {
        let Some(next) = self.queue.pop_front() else {
            candle_core::bail!("replayed noise exhausted: the solver drew more noise than given");
        };
        if next.shape() != shape {
            candle_core::bail!("replayed noise has shape {:?}, the solver asked for {shape:?}", next.shape());
        }
        next.to_dtype(dtype)?.to_device(device)
    }
}
